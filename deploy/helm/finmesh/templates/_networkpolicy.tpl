{{/*
Ingress to a service's gRPC port (both colors) only from: the services whose
"calls" list names it, this release's helm test pods, and
services.<name>.networkPolicy.extraFrom; to its metrics port only from
metrics.networkPolicy.from (from anywhere when empty). Nothing else may connect.
*/}}
{{- define "finmesh.networkPolicy" -}}
{{- $root := .root -}}
{{- $self := .name -}}
{{- $svc := index $root.Values.services $self -}}
{{- if $root.Values.networkPolicy.enabled -}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "finmesh.base" . }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "finmesh.selectorLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
  ingress:
    - from:
        {{- range $caller := keys $root.Values.services | sortAlpha }}
        {{- $callerValues := index $root.Values.services $caller }}
        {{- if and $callerValues.enabled (has $self $callerValues.calls) }}
        - podSelector:
            matchLabels:
              {{- include "finmesh.selectorLabels" (dict "root" $root "name" $caller) | nindent 14 }}
        {{- end }}
        {{- end }}
        - podSelector:
            matchLabels:
              {{- include "finmesh.selectorLabels" (dict "root" $root "name" $self "component" "helm-test") | nindent 14 }}
        {{- with $svc.networkPolicy.extraFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - port: {{ $root.Values.grpc.port }}
          protocol: TCP
    {{- if $root.Values.metrics.enabled }}
    # The metrics port alone, from the scrapers (metrics.networkPolicy.from; none listed: any source).
    - ports:
        - port: {{ $root.Values.metrics.port }}
          protocol: TCP
      {{- with $root.Values.metrics.networkPolicy.from }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
{{- end -}}
{{- end -}}
