{{/*
Identity's JSON Web Key Set (GET /.well-known/jwks.json, finmesh.identity.api.jwks) for edge proxies and
callers in other languages: the container port and Service port "jwks" of identity, FINMESH_JWKS_PORT, and a
NetworkPolicy of its own admitting jwks.networkPolicy.from (anyone when empty: the keys are public).
Kept in this file, with one-line hooks in the shared templates, so the other services' objects are untouched.
*/}}
{{- define "finmesh.jwksOn" -}}
{{- if and (eq .name "identity") .root.Values.jwks.enabled -}}true{{- end -}}
{{- end -}}

{{/* FINMESH_JWKS_PORT: the port, or -1 (no listener) with jwks off. */}}
{{- define "finmesh.jwksPortSetting" -}}
{{- if include "finmesh.jwksOn" . -}}{{ .root.Values.jwks.port }}{{- else -}}-1{{- end -}}
{{- end -}}

{{- define "finmesh.jwksContainerPort" -}}
{{- if include "finmesh.jwksOn" . }}
- name: jwks
  containerPort: {{ .root.Values.jwks.port }}
  protocol: TCP
{{- end -}}
{{- end -}}

{{- define "finmesh.jwksServicePort" -}}
{{- if include "finmesh.jwksOn" . }}
- name: jwks
  port: {{ .root.Values.jwks.port }}
  targetPort: jwks
  protocol: TCP
  appProtocol: http
{{- end -}}
{{- end -}}

{{- define "finmesh.jwksNetworkPolicy" -}}
{{- $root := .root -}}
{{- if include "finmesh.jwksOn" . -}}
{{- $port := int $root.Values.jwks.port -}}
{{- range $taken := list (list "grpc.port" $root.Values.grpc.port) (list "metrics.port" $root.Values.metrics.port) (list "mtls.healthPort" $root.Values.mtls.healthPort) -}}
{{- if eq $port (int (index $taken 1)) -}}
{{- fail (printf "jwks.port (%d) must differ from %s" $port (index $taken 0)) -}}
{{- end -}}
{{- end -}}
{{- if $root.Values.networkPolicy.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "finmesh.base" . }}-jwks
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "finmesh.selectorLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
  ingress:
    # The JWKS port alone (policies add up: the gRPC port stays as identity's own policy says).
    - ports:
        - port: {{ $port }}
          protocol: TCP
      {{- with $root.Values.jwks.networkPolicy.from }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
{{- end -}}
{{- end -}}
