{{/*
Schema migrations run before the release's objects change (pre-install,
pre-upgrade), with the image of finmesh.migrationColor. Migrations are
expand/contract, so both colors keep working against the migrated schema.
The hook ServiceAccount exists only while hooks run: the release's own
ServiceAccount is not there yet at pre-install time.
*/}}
{{- define "finmesh.migration" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values.services .name -}}
{{- if $svc.migration.enabled -}}
{{- $color := include "finmesh.migrationColor" . -}}
{{- $ctx := dict "root" $root "name" .name "color" $color "component" "migration" -}}
{{- $jobName := printf "%s-migrate" (include "finmesh.base" .) -}}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $jobName }}
  labels:
    {{- include "finmesh.labels" $ctx | nindent 4 }}
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-weight: "-10"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
automountServiceAccountToken: false
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ $jobName }}
  labels:
    {{- include "finmesh.labels" $ctx | nindent 4 }}
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-weight: "0"
    # A failed Job stays for its logs until the next attempt replaces it.
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ $svc.migration.backoffLimit }}
  activeDeadlineSeconds: {{ $svc.migration.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- include "finmesh.podLabels" $ctx | nindent 8 }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ $jobName }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext:
        {{- include "finmesh.podSecurityContext" . | nindent 8 }}
      {{- with include "finmesh.imagePullSecrets" . | trim }}{{ . | nindent 6 }}{{ end }}
      {{- with include "finmesh.scheduling" . | trim }}{{ . | nindent 6 }}{{ end }}
      containers:
        - name: migrate
          image: {{ include "finmesh.image" $ctx | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ printf "finmesh-%s" .name | quote }}]
          args: ["migrate"]
          env:
            {{- include "finmesh.databaseEnv" . | nindent 12 }}
            - name: FINMESH_LOG_LEVEL
              value: {{ $root.Values.logLevel | quote }}
            - name: FINMESH_DATA_DIR
              value: /tmp/finmesh
            - name: FINMESH_DEPLOYMENT_COLOR
              value: {{ $color }}
            - name: FINMESH_SERVICE_VERSION
              value: {{ include "finmesh.tag" $ctx | quote }}
            - name: FINMESH_TRACING_ENABLED
              value: "false"
          resources:
            {{- toYaml $svc.migration.resources | nindent 12 }}
          securityContext:
            {{- include "finmesh.containerSecurityContext" . | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
{{- end -}}
{{- end -}}
