{{/*
The active Service ("<fullname>-<service>") selects activeColor; callers only
ever use it. The preview Service ("...-preview") selects the other color, for
analysis before a flip. Flipping activeColor changes selectors, never pods.
With .color "" a Service selects every pod of the service: the active Service
during a finmesh canary (pods, hence new connections, split by replica ratio)
and both Services under Argo, which adds rollouts-pod-template-hash to the
selectors of the Services a blueGreen Rollout names.
*/}}
{{- define "finmesh.grpcService" -}}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .serviceName }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
    finmesh.io/role: {{ .role }}
spec:
  type: ClusterIP
  selector:
    {{- include "finmesh.selectorLabels" . | nindent 4 }}
    {{- with .color }}
    finmesh.io/color: {{ . }}
    {{- end }}
  ports:
    - name: grpc
      port: {{ .root.Values.grpc.port }}
      targetPort: grpc
      protocol: TCP
    {{- include "finmesh.jwksServicePort" . | nindent 4 }}
{{- end -}}

{{- define "finmesh.activeService" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $allColors := or (eq .root.Values.rollouts.engine "argo") $svc.canary.enabled -}}
{{- $color := ternary "" (include "finmesh.activeColor" .) $allColors -}}
{{- include "finmesh.grpcService" (dict "root" .root "name" .name "color" $color "role" "active" "serviceName" (include "finmesh.base" .)) -}}
{{- end -}}

{{- define "finmesh.previewService" -}}
{{- $svc := index .root.Values.services .name -}}
{{- if eq .root.Values.rollouts.engine "argo" -}}
{{- if eq $svc.rollout.strategy "blueGreen" -}}
{{- include "finmesh.grpcService" (dict "root" .root "name" .name "color" "" "role" "preview" "serviceName" (printf "%s-preview" (include "finmesh.base" .))) -}}
{{- end -}}
{{- else if $svc.preview.enabled -}}
{{- include "finmesh.grpcService" (dict "root" .root "name" .name "color" (include "finmesh.otherColor" .) "role" "preview" "serviceName" (printf "%s-preview" (include "finmesh.base" .))) -}}
{{- end -}}
{{- end -}}
