{{/*
The active Service ("<fullname>-<service>") selects activeColor; callers only
ever use it. The preview Service ("...-preview") selects the other color, for
analysis before a flip. Flipping activeColor changes selectors, never pods.
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
    finmesh.io/color: {{ .color }}
  ports:
    - name: grpc
      port: {{ .root.Values.grpc.port }}
      targetPort: grpc
      protocol: TCP
{{- end -}}

{{- define "finmesh.activeService" -}}
{{- include "finmesh.grpcService" (dict "root" .root "name" .name "color" (include "finmesh.activeColor" .) "role" "active" "serviceName" (include "finmesh.base" .)) -}}
{{- end -}}

{{- define "finmesh.previewService" -}}
{{- if (index .root.Values.services .name).preview.enabled -}}
{{- include "finmesh.grpcService" (dict "root" .root "name" .name "color" (include "finmesh.otherColor" .) "role" "preview" "serviceName" (printf "%s-preview" (include "finmesh.base" .))) -}}
{{- end -}}
{{- end -}}
