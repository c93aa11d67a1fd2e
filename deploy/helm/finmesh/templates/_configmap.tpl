{{/*
Settings shared by both colors, as a map of strings; services.<name>.config
entries win over the generated ones. Their hash is a pod annotation, so a
change here rolls both colors (a flip of activeColor changes nothing here).
*/}}
{{- define "finmesh.configData" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values.services .name -}}
{{- $data := dict
  "FINMESH_HOST" "0.0.0.0"
  "FINMESH_PORT" (toString $root.Values.grpc.port)
  "FINMESH_LOG_LEVEL" $root.Values.logLevel
  "FINMESH_DATA_DIR" "/tmp/finmesh"
  "FINMESH_DRAIN_DELAY_SECONDS" (toString $root.Values.shutdown.drainDelaySeconds)
  "FINMESH_SHUTDOWN_GRACE_SECONDS" (toString $root.Values.shutdown.graceSeconds)
  "FINMESH_MAX_CONNECTION_AGE_SECONDS" (toString $root.Values.maxConnectionAgeSeconds)
  "FINMESH_AUTO_MIGRATE" "false"
  "FINMESH_RATE_LIMIT_PER_CALLER_RPS" (toString $root.Values.overload.perCallerRps)
  "FINMESH_RATE_LIMIT_PER_CALLER_BURST" (toString $root.Values.overload.perCallerBurst)
  "FINMESH_RATE_LIMIT_PER_SERVICE_RPS" (toString $root.Values.overload.perServiceRps)
  "FINMESH_RATE_LIMIT_PER_SERVICE_BURST" (toString $root.Values.overload.perServiceBurst)
  "FINMESH_RATE_LIMIT_MAX_CALLERS" (toString $root.Values.overload.maxCallers)
  "FINMESH_MAX_CONCURRENT_RPCS" (toString $root.Values.overload.maxConcurrentRpcs)
  "FINMESH_DB_POOL_SIZE" (toString $root.Values.databasePool.poolSize)
  "FINMESH_DB_READ_POOL_SIZE" (toString $root.Values.databasePool.readPoolSize)
  "OTEL_SERVICE_NAME" .name
  "OTEL_TRACES_SAMPLER" $root.Values.otel.sampler
  "OTEL_TRACES_SAMPLER_ARG" $root.Values.otel.samplerArg
  "FINMESH_AUTH_MODE" $root.Values.auth.mode
  "FINMESH_SERVICE_NAME" .name
  "FINMESH_METRICS_ENABLED" (toString $root.Values.metrics.enabled)
  "FINMESH_METRICS_PORT" (ternary (toString $root.Values.metrics.port) "-1" $root.Values.metrics.enabled)
-}}
{{- if eq .name "identity" -}}
{{- $_ := set $data "FINMESH_JWKS_PORT" (include "finmesh.jwksPortSetting" .) -}}
{{- end -}}
{{- with $svc.registry -}}
{{- if .url -}}
{{- $_ := set $data "FINMESH_IDENTITY_REGISTRY_URL" .url -}}
{{- end -}}
{{- end -}}
{{- if $svc.rules -}}
{{- $_ := set $data "FINMESH_RISK_RULES_FILE" (printf "%s/rules.yaml" (include "finmesh.rulesDir" .)) -}}
{{- end -}}
{{- range $callee := $svc.calls -}}
{{- if (index $root.Values.services $callee).enabled -}}
{{- $target := printf "%s:%d" (include "finmesh.base" (dict "root" $root "name" $callee)) (int $root.Values.grpc.port) -}}
{{- $_ := set $data (printf "FINMESH_%s_TARGET" (upper $callee)) $target -}}
{{- end -}}
{{- end -}}
{{- with $root.Values.otel.endpoint -}}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_ENDPOINT" . -}}
{{- $_ := set $data "OTEL_EXPORTER_OTLP_PROTOCOL" $root.Values.otel.protocol -}}
{{- end -}}
{{- range $key, $value := include "finmesh.backendConfig" . | fromYaml -}}
{{- $_ := set $data $key (toString $value) -}}
{{- end -}}
{{- range $key, $value := $svc.config -}}
{{- $_ := set $data $key (toString $value) -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{- define "finmesh.configMap" -}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "finmesh.base" . }}-config
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
data:
  {{- include "finmesh.configData" . | nindent 2 }}
{{- end -}}


{{/* Where risk's rules ConfigMap is mounted. */}}
{{- define "finmesh.rulesDir" -}}/etc/finmesh/risk{{- end -}}

{{/*
risk's rules (services.risk.rules), a ConfigMap of their own mounted as a
directory: the kubelet replaces the file in one step on an edit, and risk
reloads it without a restart, so a rules change rolls no pods.
*/}}
{{- define "finmesh.rulesConfigMap" -}}
{{- $svc := index .root.Values.services .name -}}
{{- if $svc.rules }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "finmesh.base" . }}-rules
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
data:
  rules.yaml: |
    {{- $svc.rules | nindent 4 }}
{{- end -}}
{{- end -}}
