{{/*
One Deployment per color. Everything in the pod template depends only on this
color's values and the shared config, so flipping activeColor or changing the
other color never restarts these pods.
*/}}
{{- define "finmesh.deployment" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values.services .name -}}
{{- $c := index $svc .color -}}
{{- $hpa := and $svc.autoscaling.enabled (gt (int $c.replicas) 0) -}}
{{- $mtls := $root.Values.mtls.enabled -}}
{{- $probePort := ternary $root.Values.mtls.healthPort $root.Values.grpc.port $mtls -}}
{{- $name := printf "%s-%s" (include "finmesh.base" .) .color -}}
{{- $tag := include "finmesh.tag" . -}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
    finmesh.io/role: {{ ternary "active" "inactive" (eq .color $svc.activeColor) }}
spec:
  {{- if not $hpa }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "finmesh.selectorLabels" . | nindent 6 }}
      finmesh.io/color: {{ .color }}
  template:
    metadata:
      labels:
        {{- include "finmesh.podLabels" . | nindent 8 }}
      annotations:
        checksum/config: {{ include "finmesh.configData" . | sha256sum }}
        {{- if $root.Values.metrics.enabled }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $root.Values.metrics.port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "finmesh.base" . }}
      automountServiceAccountToken: false
      # Service links would inject FINMESH_*-looking variables for Services named finmesh-*.
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ add $root.Values.shutdown.drainDelaySeconds $root.Values.shutdown.graceSeconds 10 }}
      securityContext:
        {{- include "finmesh.podSecurityContext" . | nindent 8 }}
      {{- with include "finmesh.imagePullSecrets" . | trim }}{{ . | nindent 6 }}{{ end }}
      {{- with include "finmesh.scheduling" . | trim }}{{ . | nindent 6 }}{{ end }}
      {{- if $root.Values.topologySpread.enabled }}
      topologySpreadConstraints:
        - maxSkew: {{ $root.Values.topologySpread.maxSkew }}
          topologyKey: {{ $root.Values.topologySpread.topologyKey }}
          whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "finmesh.selectorLabels" . | nindent 14 }}
              finmesh.io/color: {{ .color }}
          matchLabelKeys:
            - pod-template-hash
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "finmesh.image" . | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - name: grpc
              containerPort: {{ $root.Values.grpc.port }}
              protocol: TCP
            {{- if $mtls }}
            - name: health
              containerPort: {{ $root.Values.mtls.healthPort }}
              protocol: TCP
            {{- end }}
            {{- if $root.Values.metrics.enabled }}
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "finmesh.base" . }}-config
          env:
            {{- include "finmesh.databaseEnv" . | nindent 12 }}
            {{- with include "finmesh.authEnv" . | trim }}{{ . | nindent 12 }}{{ end }}
            - name: K8S_POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: K8S_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: FINMESH_DEPLOYMENT_COLOR
              value: {{ .color }}
            - name: FINMESH_SERVICE_VERSION
              value: {{ $tag | quote }}
            - name: OTEL_RESOURCE_ATTRIBUTES
              value: {{ include "finmesh.resourceAttributes" (dict "root" $root "name" .name "color" .color "deployment" $name) | quote }}
            {{- if $mtls }}
            - name: FINMESH_HEALTH_PORT
              value: {{ $root.Values.mtls.healthPort | quote }}
            {{- with include "finmesh.mtlsEnv" . | trim }}{{ . | nindent 12 }}{{ end }}
            {{- end }}
          {{- with $root.Values.probes }}
          startupProbe:
            grpc:
              port: {{ $probePort }}
            periodSeconds: {{ .startup.periodSeconds }}
            timeoutSeconds: {{ .startup.timeoutSeconds }}
            failureThreshold: {{ .startup.failureThreshold }}
          readinessProbe:
            grpc:
              port: {{ $probePort }}
            periodSeconds: {{ .readiness.periodSeconds }}
            timeoutSeconds: {{ .readiness.timeoutSeconds }}
            failureThreshold: {{ .readiness.failureThreshold }}
            successThreshold: 1
          livenessProbe:
            grpc:
              port: {{ $probePort }}
            periodSeconds: {{ .liveness.periodSeconds }}
            timeoutSeconds: {{ .liveness.timeoutSeconds }}
            failureThreshold: {{ .liveness.failureThreshold }}
          {{- end }}
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- include "finmesh.containerSecurityContext" . | nindent 12 }}
          volumeMounts:
            {{- include "finmesh.volumeMounts" . | nindent 12 }}
      volumes:
        {{- include "finmesh.volumes" . | nindent 8 }}
{{- end -}}

{{/* OTEL_RESOURCE_ATTRIBUTES of one color: fixed attributes, then otel.resourceAttributes. */}}
{{- define "finmesh.resourceAttributes" -}}
{{- $attrs := list
  "service.namespace=finmesh"
  (printf "service.version=%s" (include "finmesh.tag" .))
  (printf "deployment.color=%s" .color)
  "k8s.namespace.name=$(K8S_NAMESPACE)"
  "k8s.pod.name=$(K8S_POD_NAME)"
  (printf "k8s.deployment.name=%s" .deployment)
-}}
{{- range $key, $value := .root.Values.otel.resourceAttributes -}}
{{- $attrs = append $attrs (printf "%s=%s" $key (toString $value)) -}}
{{- end -}}
{{- join "," $attrs -}}
{{- end -}}
