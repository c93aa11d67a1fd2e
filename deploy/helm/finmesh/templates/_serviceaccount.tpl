{{- define "finmesh.serviceAccount" -}}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "finmesh.base" . }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
# The services never talk to the Kubernetes API.
automountServiceAccountToken: false
{{- end -}}
