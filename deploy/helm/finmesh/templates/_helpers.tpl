{{/*
Shared helpers. Most templates take a context dict instead of the root:
  root       the chart root ($)
  name       service name: identity | payments | risk | notify
  color      blue | green, for objects that belong to one color (optional)
  component  server (default) | migration | helm-test
*/}}

{{- define "finmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<service>": the active Service, and the stem of every other name. */}}
{{- define "finmesh.base" -}}
{{- printf "%s-%s" (include "finmesh.fullname" .root) .name -}}
{{- end -}}

{{/* The color the active Service selects. */}}
{{- define "finmesh.activeColor" -}}
{{- (index .root.Values.services .name).activeColor -}}
{{- end -}}

{{- define "finmesh.otherColor" -}}
{{- ternary "green" "blue" (eq (include "finmesh.activeColor" .) "blue") -}}
{{- end -}}

{{/*
The color whose image runs the migration Job: services.<name>.migration.color
if set; else the active color if the other one is off; else, when both tags
are semantic versions, the color with the newer one (so promotion and
rollback never run an older migrate against a newer schema); else the
preview color while preview is on; else the active color. Under
rollouts.engine=argo, always the active color: its tag is the Rollout's, the
version being rolled out, and migrations are expand-only.
*/}}
{{- define "finmesh.migrationColor" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $active := $svc.activeColor -}}
{{- $other := include "finmesh.otherColor" . -}}
{{- $activeTag := (index $svc $active).tag -}}
{{- $otherTag := (index $svc $other).tag -}}
{{- $semver := `^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$` -}}
{{- if eq .root.Values.rollouts.engine "argo" -}}
{{- $active -}}
{{- else if $svc.migration.color -}}
{{- $svc.migration.color -}}
{{- else if eq (int (index $svc $other).replicas) 0 -}}
{{- $active -}}
{{- else if and (regexMatch $semver $activeTag) (regexMatch $semver $otherTag) -}}
{{- ternary $other $active ((semver $otherTag).GreaterThan (semver $activeTag)) -}}
{{- else if $svc.preview.enabled -}}
{{- $other -}}
{{- else -}}
{{- $active -}}
{{- end -}}
{{- end -}}

{{/* Image tag of .color, or of the active color for objects shared by both. */}}
{{- define "finmesh.tag" -}}
{{- $svc := index .root.Values.services .name -}}
{{- (index $svc (.color | default $svc.activeColor)).tag -}}
{{- end -}}

{{- define "finmesh.image" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $repo := $svc.image.repository -}}
{{- with .root.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- printf "%s:%s" $repo (include "finmesh.tag" .) -}}
{{- end -}}

{{- define "finmesh.version" -}}
{{- include "finmesh.tag" . | trunc 63 | trimSuffix "-" | trimSuffix "." | trimSuffix "_" -}}
{{- end -}}

{{/* Labels that select a service's pods; a Deployment or Service adds finmesh.io/color. */}}
{{- define "finmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component | default "server" }}
{{- end -}}

{{/* Labels of pods: no chart version, so a chart upgrade alone restarts no color. */}}
{{- define "finmesh.podLabels" -}}
{{ include "finmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ include "finmesh.version" . | quote }}
app.kubernetes.io/part-of: finmesh
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .color }}
finmesh.io/color: {{ . }}
{{- end }}
{{- end -}}

{{- define "finmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "finmesh.podLabels" . }}
{{- end -}}

{{/* Hardened security contexts; uid/gid 10001 is the USER of deploy/docker/Dockerfile. */}}
{{- define "finmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "finmesh.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "finmesh.mtlsSecretName" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $svc.mtls.secretName | default .root.Values.mtls.secretName | default (printf "%s-tls" (include "finmesh.base" .)) -}}
{{- end -}}

{{/* Environment naming the mTLS files (empty when mTLS is off). */}}
{{- define "finmesh.mtlsEnv" -}}
{{- if .root.Values.mtls.enabled }}
{{- $dir := .root.Values.mtls.mountPath }}
- name: FINMESH_TLS_CERT_FILE
  value: {{ printf "%s/tls.crt" $dir | quote }}
- name: FINMESH_TLS_KEY_FILE
  value: {{ printf "%s/tls.key" $dir | quote }}
- name: FINMESH_TLS_CA_FILE
  value: {{ printf "%s/ca.crt" $dir | quote }}
{{- end }}
{{- end -}}

{{/* Volume mounts of every finmesh container: a writable /tmp on a read-only root, and the mTLS files. */}}
{{- define "finmesh.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if (index .root.Values.services .name).rules }}
- name: rules
  mountPath: {{ include "finmesh.rulesDir" . }}
  readOnly: true
{{- end }}
{{- if .root.Values.mtls.enabled }}
- name: mtls
  mountPath: {{ .root.Values.mtls.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "finmesh.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if (index .root.Values.services .name).rules }}
- name: rules
  configMap:
    name: {{ include "finmesh.base" . }}-rules
    defaultMode: 0444
{{- end }}
{{- if .root.Values.mtls.enabled }}
- name: mtls
  secret:
    secretName: {{ include "finmesh.mtlsSecretName" . }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{/*
Secrets of the auth setup (services.<name>.auth, identity's registry key):
never in the ConfigMap, always by secretKeyRef.
*/}}
{{- define "finmesh.authEnv" -}}
{{- $svc := index .root.Values.services .name -}}
{{- with $svc.auth.credentialSecret }}
- name: FINMESH_SERVICE_CREDENTIAL
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $svc.auth.credentialKey }}
{{- end }}
{{- with $svc.auth.serviceSecret }}
- name: FINMESH_SERVICE_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- with $svc.auth.masterKey }}
- name: FINMESH_IDENTITY_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- with $svc.registry }}
{{- if .url }}
- name: FINMESH_IDENTITY_REGISTRY_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .apiKeySecret }}
      key: {{ .apiKeyKey }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "finmesh.databaseEnv" -}}
{{- $svc := index .root.Values.services .name -}}
- name: FINMESH_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $svc.database.existingSecret }}
      key: {{ $svc.database.key }}
{{- end -}}

{{- define "finmesh.imagePullSecrets" -}}
{{- with .root.Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Scheduling settings shared by every pod. */}}
{{- define "finmesh.scheduling" -}}
{{- with .root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Checks across values that values.schema.json cannot express. */}}
{{- define "finmesh.validate" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $active := $svc.activeColor -}}
{{- $other := include "finmesh.otherColor" . -}}
{{- if eq (int (index $svc $active).replicas) 0 -}}
{{- fail (printf "services.%s.activeColor is %s but services.%s.%s.replicas is 0: the active Service would select no pods; scale %s up first" .name $active .name $active $active) -}}
{{- end -}}
{{- if and $svc.preview.enabled (eq (int (index $svc $other).replicas) 0) -}}
{{- fail (printf "services.%s.preview.enabled is true but services.%s.%s.replicas is 0: the preview Service would select no pods" .name .name $other) -}}
{{- end -}}
{{- if $svc.autoscaling.enabled -}}
{{- range $color := list "blue" "green" -}}
{{- $replicas := int (index $svc $color).replicas -}}
{{- if gt $replicas (int $svc.autoscaling.maxReplicas) -}}
{{- fail (printf "services.%s.%s.replicas (%d) exceeds services.%s.autoscaling.maxReplicas (%d)" $.name $color $replicas $.name (int $svc.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .root.Values.mtls.enabled (eq (int .root.Values.mtls.healthPort) (int .root.Values.grpc.port)) -}}
{{- fail (printf "mtls.healthPort (%d) must differ from grpc.port: the health port serves plaintext" (int .root.Values.mtls.healthPort)) -}}
{{- end -}}
{{- if has .name $svc.calls -}}
{{- fail (printf "services.%s.calls lists %s itself" .name .name) -}}
{{- end -}}
{{- if eq .root.Values.rollouts.engine "argo" -}}
{{- if $svc.canary.enabled -}}
{{- fail (printf "services.%s.canary.enabled is for rollouts.engine finmesh; under argo set services.%s.rollout.strategy: canary" .name .name) -}}
{{- end -}}
{{- if $svc.preview.enabled -}}
{{- fail (printf "services.%s.preview.enabled is for rollouts.engine finmesh; under argo the Rollout owns the preview Service (rollout.strategy: blueGreen)" .name) -}}
{{- end -}}
{{- if not .root.Values.rollouts.analysis.prometheusAddress -}}
{{- fail "rollouts.engine argo needs rollouts.analysis.prometheusAddress: the AnalysisTemplates query that Prometheus" -}}
{{- end -}}
{{- else if $svc.canary.enabled -}}
{{- if $svc.preview.enabled -}}
{{- fail (printf "services.%s.canary.enabled and services.%s.preview.enabled exclude each other: during a canary the active Service carries both colors" .name .name) -}}
{{- end -}}
{{- if eq (int (index $svc $other).replicas) 0 -}}
{{- fail (printf "services.%s.canary.enabled is true but services.%s.%s.replicas is 0: a canary needs pods of both colors behind the active Service" .name .name $other) -}}
{{- end -}}
{{- end -}}
{{- end -}}
