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
{{- $name := printf "%s-%s" (include "finmesh.base" .) .color -}}
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
    {{- include "finmesh.podTemplate" . | nindent 4 }}
{{- end -}}

{{/*
The pod template of a service's servers, shared by both engines: a color's
Deployment (.color blue | green) and, under rollouts.engine=argo, the
service's Rollout (.color ""). Under argo the pods carry no finmesh.io/color:
Argo labels each ReplicaSet's pods with rollouts-pod-template-hash, and that
hash, read through the downward API, is the pod's deployment color.
*/}}
{{- define "finmesh.podTemplate" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values.services .name -}}
{{- $mtls := $root.Values.mtls.enabled -}}
{{- $probePort := ternary $root.Values.mtls.healthPort $root.Values.grpc.port $mtls -}}
{{- $name := ternary (printf "%s-%s" (include "finmesh.base" .) .color) "" (ne (.color | default "") "") -}}
{{- $tag := include "finmesh.tag" . -}}
metadata:
  labels:
    {{- include "finmesh.podLabels" . | nindent 4 }}
  annotations:
    checksum/config: {{ include "finmesh.configData" . | sha256sum }}
    {{- if $root.Values.metrics.enabled }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $root.Values.metrics.port | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "finmesh.base" . }}
  automountServiceAccountToken: false
  # Service links would inject FINMESH_*-looking variables for Services named finmesh-*.
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ add $root.Values.shutdown.drainDelaySeconds $root.Values.shutdown.graceSeconds 10 }}
  securityContext:
    {{- include "finmesh.podSecurityContext" . | nindent 4 }}
  {{- with include "finmesh.imagePullSecrets" . | trim }}{{ . | nindent 2 }}{{ end }}
  {{- with include "finmesh.scheduling" . | trim }}{{ . | nindent 2 }}{{ end }}
  {{- if $root.Values.topologySpread.enabled }}
  topologySpreadConstraints:
    - maxSkew: {{ $root.Values.topologySpread.maxSkew }}
      topologyKey: {{ $root.Values.topologySpread.topologyKey }}
      whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "finmesh.selectorLabels" . | nindent 10 }}
          {{- with .color }}
          finmesh.io/color: {{ . }}
          {{- end }}
      # Spread each ReplicaSet's pods (Argo's ReplicaSets carry rollouts-pod-template-hash instead).
      matchLabelKeys:
        - {{ ternary "pod-template-hash" "rollouts-pod-template-hash" (ne $name "") }}
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
        {{- include "finmesh.jwksContainerPort" . | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ include "finmesh.base" . }}-config
      env:
        {{- include "finmesh.databaseEnv" . | nindent 8 }}
        {{- with include "finmesh.authEnv" . | trim }}{{ . | nindent 8 }}{{ end }}
        {{- with include "finmesh.backendSecretEnv" . | trim }}{{ . | nindent 8 }}{{ end }}
        - name: K8S_POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: K8S_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: FINMESH_DEPLOYMENT_COLOR
          {{- if .color }}
          value: {{ .color }}
          {{- else }}
          # Argo: the ReplicaSet's pod-template hash, what AnalysisTemplates compare (Latest against Stable).
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['rollouts-pod-template-hash']
          {{- end }}
        - name: FINMESH_SERVICE_VERSION
          value: {{ $tag | quote }}
        - name: OTEL_RESOURCE_ATTRIBUTES
          value: {{ include "finmesh.resourceAttributes" (dict "root" $root "name" .name "color" .color "deployment" $name) | quote }}
        {{- if $mtls }}
        - name: FINMESH_HEALTH_PORT
          value: {{ $root.Values.mtls.healthPort | quote }}
        {{- with include "finmesh.mtlsEnv" . | trim }}{{ . | nindent 8 }}{{ end }}
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
        {{- toYaml $svc.resources | nindent 8 }}
      securityContext:
        {{- include "finmesh.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        {{- include "finmesh.volumeMounts" . | nindent 8 }}
  volumes:
    {{- include "finmesh.volumes" . | nindent 4 }}
{{- end -}}

{{/*
OTEL_RESOURCE_ATTRIBUTES of one color: fixed attributes, then otel.resourceAttributes.
Under argo the color is $(FINMESH_DEPLOYMENT_COLOR) (the pod-template hash, defined
earlier in env) and there is no Deployment to name.
*/}}
{{- define "finmesh.resourceAttributes" -}}
{{- $attrs := list
  "service.namespace=finmesh"
  (printf "service.version=%s" (include "finmesh.tag" .))
  (printf "deployment.color=%s" (.color | default "$(FINMESH_DEPLOYMENT_COLOR)"))
  "k8s.namespace.name=$(K8S_NAMESPACE)"
  "k8s.pod.name=$(K8S_POD_NAME)"
-}}
{{- with .deployment -}}
{{- $attrs = append $attrs (printf "k8s.deployment.name=%s" .) -}}
{{- end -}}
{{- range $key, $value := .root.Values.otel.resourceAttributes -}}
{{- $attrs = append $attrs (printf "%s=%s" $key (toString $value)) -}}
{{- end -}}
{{- join "," $attrs -}}
{{- end -}}
