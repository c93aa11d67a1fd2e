{{/*
Everything one service needs. templates/<service>.yaml calls it with
(dict "root" $ "name" "<service>"); each kind lives in its own _<kind>.tpl.
rollouts.engine picks the workload: two color Deployments (finmesh) or a Rollout
with its AnalysisTemplates (argo, _rollout.tpl).
*/}}
{{- define "finmesh.service" -}}
{{- $svc := index .root.Values.services .name -}}
{{- if $svc.enabled -}}
{{- include "finmesh.validate" . -}}
{{ include "finmesh.serviceAccount" . }}
{{ include "finmesh.configMap" . }}
{{ include "finmesh.rulesConfigMap" . }}
{{ include "finmesh.activeService" . }}
{{ include "finmesh.previewService" . }}
{{ include "finmesh.networkPolicy" . }}
{{ include "finmesh.egressPolicy" . }}
{{ include "finmesh.serviceMonitor" . }}
{{- if eq .root.Values.rollouts.engine "argo" }}
{{- $c := dict "root" .root "name" .name "color" "" }}
{{ include "finmesh.rollout" $c }}
{{ include "finmesh.analysisTemplates" $c }}
{{ include "finmesh.metricsService" $c }}
{{ include "finmesh.hpa" $c }}
{{ include "finmesh.pdb" $c }}
{{- else }}
{{- range $color := list "blue" "green" }}
{{- $c := dict "root" $.root "name" $.name "color" $color }}
{{ include "finmesh.deployment" $c }}
{{ include "finmesh.metricsService" $c }}
{{ include "finmesh.hpa" $c }}
{{ include "finmesh.pdb" $c }}
{{- end }}
{{- end }}
{{ include "finmesh.migration" . }}
{{ include "finmesh.tests" . }}
{{- end -}}
{{- end -}}
