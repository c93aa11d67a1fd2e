{{/*
`helm test <release>`: per service, `finmesh health` against the active
Service and, while preview is on, against the preview Service, each with the
image of the color it checks and, with mTLS on, a client certificate.
*/}}
{{- define "finmesh.tests" -}}
{{- $svc := index .root.Values.services .name -}}
{{- if .root.Values.tests.enabled -}}
{{- include "finmesh.testPod" (dict "root" .root "name" .name "color" $svc.activeColor "component" "helm-test" "target" (include "finmesh.base" .) "suffix" "test-health") -}}
{{- if $svc.preview.enabled }}
{{ include "finmesh.testPod" (dict "root" .root "name" .name "color" (include "finmesh.otherColor" .) "component" "helm-test" "target" (printf "%s-preview" (include "finmesh.base" .)) "suffix" "test-preview-health") -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "finmesh.testPod" -}}
{{- $root := .root -}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {{ include "finmesh.base" . }}-{{ .suffix }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
  annotations:
    helm.sh/hook: test
    # A failed test pod stays for its logs until the next `helm test`.
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "finmesh.base" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  securityContext:
    {{- include "finmesh.podSecurityContext" . | nindent 4 }}
  {{- with include "finmesh.imagePullSecrets" . | trim }}{{ . | nindent 2 }}{{ end }}
  {{- with include "finmesh.scheduling" . | trim }}{{ . | nindent 2 }}{{ end }}
  containers:
    - name: health
      image: {{ include "finmesh.image" . | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command: ["finmesh", "health", {{ printf "%s:%d" .target (int $root.Values.grpc.port) | quote }}]
      env:
        - name: FINMESH_LOG_LEVEL
          value: {{ $root.Values.logLevel | quote }}
        - name: FINMESH_DATA_DIR
          value: /tmp/finmesh
        {{- with include "finmesh.mtlsEnv" . | trim }}{{ . | nindent 8 }}{{ end }}
      resources:
        {{- toYaml $root.Values.tests.resources | nindent 8 }}
      securityContext:
        {{- include "finmesh.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        {{- include "finmesh.volumeMounts" . | nindent 8 }}
  volumes:
    {{- include "finmesh.volumes" . | nindent 4 }}
{{- end -}}
