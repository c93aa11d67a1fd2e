{{/*
Scraping both colors. The active and preview Services follow activeColor, so
scraping through them would lose the color that is not selected (and switch
colors under a query on every flip). Each color gets a headless metrics
Service of its own instead: a flip changes nothing here, and every target
keeps its color. Under rollouts.engine=argo (.color "") one metrics Service
selects all the service's pods: each pod's series carry its pod-template hash
as deployment_color, and the ServiceMonitor copies the hash label as well.
*/}}
{{- define "finmesh.metricsService" -}}
{{- if .root.Values.metrics.enabled }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "finmesh.base" . }}-metrics{{ with .color }}-{{ . }}{{ end }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
    finmesh.io/role: metrics
spec:
  type: ClusterIP
  clusterIP: None
  selector:
    {{- include "finmesh.selectorLabels" . | nindent 4 }}
    {{- with .color }}
    finmesh.io/color: {{ . }}
    {{- end }}
  ports:
    - name: metrics
      port: {{ .root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
{{- end }}
{{- end -}}

{{/*
prometheus-operator: one ServiceMonitor per service over both colors' metrics
Services. podTargetLabels copy the pod's service, version and color labels
onto every series (app_kubernetes_io_name, app_kubernetes_io_version,
finmesh_io_color), so `up` and scrape health split by color too.
*/}}
{{- define "finmesh.serviceMonitor" -}}
{{- $metrics := .root.Values.metrics -}}
{{- if and $metrics.enabled $metrics.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "finmesh.base" . }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
    {{- with $metrics.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "finmesh.selectorLabels" . | nindent 6 }}
      finmesh.io/role: metrics
  namespaceSelector:
    matchNames:
      - {{ .root.Release.Namespace }}
  podTargetLabels:
    - app.kubernetes.io/name
    - app.kubernetes.io/version
    - finmesh.io/color
    {{- if eq .root.Values.rollouts.engine "argo" }}
    - rollouts-pod-template-hash
    {{- end }}
  endpoints:
    - port: metrics
      path: /metrics
      scheme: http
      interval: {{ $metrics.serviceMonitor.interval }}
      {{- with $metrics.serviceMonitor.scrapeTimeout }}
      scrapeTimeout: {{ . }}
      {{- end }}
{{- end }}
{{- end -}}

{{/* Labels of the chart-wide monitoring objects (PrometheusRule, dashboard). */}}
{{- define "finmesh.monitoringLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: monitoring
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: finmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Checks of the metrics values that values.schema.json cannot express. */}}
{{- define "finmesh.validateMetrics" -}}
{{- $metrics := .Values.metrics -}}
{{- if not $metrics.enabled -}}
{{- range $part := list "serviceMonitor" "prometheusRule" "dashboard" -}}
{{- if (index $metrics $part).enabled -}}
{{- fail (printf "metrics.%s.enabled is true but metrics.enabled is false: there would be no metrics to scrape, alert on or show" $part) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- if eq (int $metrics.port) (int .Values.grpc.port) -}}
{{- fail (printf "metrics.port (%d) must differ from grpc.port" (int $metrics.port)) -}}
{{- end -}}
{{- if and .Values.mtls.enabled (eq (int $metrics.port) (int .Values.mtls.healthPort)) -}}
{{- fail (printf "metrics.port (%d) must differ from mtls.healthPort" (int $metrics.port)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
