{{/*
Shared backends every service may use: Redis for the rate limiter's buckets
(overload.backend redis) and RabbitMQ for events (events.transport rabbitmq).
Their settings go into the ConfigMap; their credentials only by Secret
reference (redis.existingSecret, events.rabbitmq.existingSecret), never
inline. The names of the variables, in one place:
*/}}
{{- define "finmesh.backendEnvNames" -}}
rateLimitBackend: FINMESH_RATE_LIMIT_BACKEND
redisUrl: FINMESH_REDIS_URL
redisPassword: FINMESH_REDIS_PASSWORD
redisKeyPrefix: FINMESH_REDIS_KEY_PREFIX
redisTimeout: FINMESH_REDIS_TIMEOUT_SECONDS
eventsTransport: FINMESH_EVENTS_TRANSPORT
rabbitmqUrl: FINMESH_EVENTS_RABBITMQ_URL
rabbitmqVhost: FINMESH_EVENTS_RABBITMQ_VHOST
rabbitmqExchangePrefix: FINMESH_EVENTS_RABBITMQ_EXCHANGE_PREFIX
{{- end -}}

{{/* The ConfigMap entries of the backends (a dict, merged into finmesh.configData). */}}
{{- define "finmesh.backendConfig" -}}
{{- $v := .root.Values -}}
{{- $n := include "finmesh.backendEnvNames" . | fromYaml -}}
{{- $data := dict (get $n "rateLimitBackend") $v.overload.backend (get $n "eventsTransport") $v.events.transport -}}
{{- if eq $v.overload.backend "redis" -}}
{{- $_ := set $data (get $n "redisTimeout") (toString $v.overload.redisTimeoutSeconds) -}}
{{- $_ := set $data (get $n "redisKeyPrefix") $v.redis.keyPrefix -}}
{{- if not $v.redis.urlKey -}}
{{- $_ := set $data (get $n "redisUrl") $v.redis.url -}}
{{- end -}}
{{- end -}}
{{- if eq $v.events.transport "rabbitmq" -}}
{{- with $v.events.rabbitmq.vhost -}}
{{- $_ := set $data (get $n "rabbitmqVhost") . -}}
{{- end -}}
{{- with $v.events.rabbitmq.exchangePrefix -}}
{{- $_ := set $data (get $n "rabbitmqExchangePrefix") . -}}
{{- end -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* Container env of the backends' credentials: Secret references only. */}}
{{- define "finmesh.backendSecretEnv" -}}
{{- $v := .root.Values -}}
{{- $n := include "finmesh.backendEnvNames" . | fromYaml -}}
{{- if and (eq $v.overload.backend "redis") $v.redis.existingSecret }}
{{- if $v.redis.urlKey }}
- name: {{ get $n "redisUrl" }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.existingSecret }}
      key: {{ $v.redis.urlKey }}
{{- end }}
{{- if $v.redis.passwordKey }}
- name: {{ get $n "redisPassword" }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.existingSecret }}
      key: {{ $v.redis.passwordKey }}
{{- end }}
{{- end }}
{{- if eq $v.events.transport "rabbitmq" }}
- name: {{ get $n "rabbitmqUrl" }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.events.rabbitmq.existingSecret }}
      key: {{ $v.events.rabbitmq.urlKey }}
{{- end }}
{{- end -}}

{{/*
Egress of a service's pods (networkPolicy.egress.enabled): DNS, the services
it calls, Redis when the limiter uses it, the broker when events go through
it, and networkPolicy.egress.extraTo (the database, the OTLP collector, the
registry...). Everything else is refused. A backend's "networkPolicyTo" lists
its peers; empty: any address, on its port only.
*/}}
{{- define "finmesh.egressPolicy" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $svc := index $v.services .name -}}
{{- if and $v.networkPolicy.enabled $v.networkPolicy.egress.enabled -}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "finmesh.base" . }}-egress
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "finmesh.selectorLabels" . | nindent 6 }}
  policyTypes:
    - Egress
  egress:
    # Name resolution.
    - ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
      {{- with $v.networkPolicy.egress.dnsTo }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- $callees := list }}
    {{- range $callee := $svc.calls }}
    {{- if (index $v.services $callee).enabled }}
    {{- $callees = append $callees $callee }}
    {{- end }}
    {{- end }}
    {{- if $callees }}
    # The services this one calls (both colors).
    - to:
        {{- range $callee := $callees }}
        - podSelector:
            matchLabels:
              {{- include "finmesh.selectorLabels" (dict "root" $root "name" $callee) | nindent 14 }}
        {{- end }}
      ports:
        - port: {{ $v.grpc.port }}
          protocol: TCP
    {{- end }}
    {{- if eq $v.overload.backend "redis" }}
    # Redis: the shared rate-limit buckets.
    - ports:
        - port: {{ $v.redis.port }}
          protocol: TCP
      {{- with $v.redis.networkPolicyTo }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
    {{- if eq $v.events.transport "rabbitmq" }}
    # RabbitMQ: events.
    - ports:
        - port: {{ $v.events.rabbitmq.port }}
          protocol: TCP
      {{- with $v.events.rabbitmq.networkPolicyTo }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
    {{- with $v.networkPolicy.egress.extraTo }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
{{- end -}}
