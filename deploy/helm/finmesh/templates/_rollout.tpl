{{/*
rollouts.engine=argo: the service is one Argo Rollouts Rollout instead of two
color Deployments, with the same pod template (finmesh.podTemplate), the tag
and replicas of activeColor (change that tag to start a rollout), and the
strategy of services.<name>.rollout: blueGreen through the active and preview
Services, or canary by replica ratio behind the active Service (no traffic
router: Argo scales the canary ReplicaSet to the step's weight).
*/}}
{{- define "finmesh.rollout" -}}
{{- $root := .root -}}
{{- $svc := index $root.Values.services .name -}}
{{- $c := index $svc $svc.activeColor -}}
{{- $hpa := and $svc.autoscaling.enabled (gt (int $c.replicas) 0) -}}
{{- $base := include "finmesh.base" . -}}
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: {{ $base }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
spec:
  {{- if not $hpa }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "finmesh.selectorLabels" . | nindent 6 }}
  template:
    {{- include "finmesh.podTemplate" . | nindent 4 }}
  strategy:
    {{- if eq $svc.rollout.strategy "blueGreen" }}
    {{- $bg := $svc.rollout.blueGreen }}
    blueGreen:
      activeService: {{ $base }}
      previewService: {{ $base }}-preview
      autoPromotionEnabled: {{ $bg.autoPromotionEnabled }}
      scaleDownDelaySeconds: {{ $bg.scaleDownDelaySeconds }}
      {{- if gt (int $bg.prePromotionAnalysisSeconds) 0 }}
      prePromotionAnalysis:
        {{- include "finmesh.analysisRef" (dict "root" $root "name" .name "seconds" $bg.prePromotionAnalysisSeconds) | nindent 8 }}
      {{- end }}
      {{- if gt (int $bg.postPromotionAnalysisSeconds) 0 }}
      postPromotionAnalysis:
        {{- include "finmesh.analysisRef" (dict "root" $root "name" .name "seconds" $bg.postPromotionAnalysisSeconds) | nindent 8 }}
      {{- end }}
    {{- else }}
    canary:
      steps:
        {{- range $step := $svc.rollout.canary.steps }}
        {{- if hasKey $step "setWeight" }}
        - setWeight: {{ $step.setWeight }}
        {{- else if hasKey $step "pause" }}
        {{- if hasKey $step.pause "seconds" }}
        - pause:
            duration: {{ $step.pause.seconds }}
        {{- else }}
        - pause: {}
        {{- end }}
        {{- else }}
        - analysis:
            {{- include "finmesh.analysisRef" (dict "root" $root "name" $.name "seconds" $step.analysis.seconds) | nindent 12 }}
        {{- end }}
        {{- end }}
    {{- end }}
{{- end -}}

{{/* An analysis of .seconds: its AnalysisTemplate and the pod-template hashes it compares. */}}
{{- define "finmesh.analysisRef" -}}
templates:
  - templateName: {{ include "finmesh.base" . }}-analysis-{{ int .seconds }}s
args:
  - name: latest-hash
    valueFrom:
      podTemplateHashValue: Latest
  - name: stable-hash
    valueFrom:
      podTemplateHashValue: Stable
{{- end -}}

{{/* The analysis lengths (seconds, as strings) the service's strategy uses. */}}
{{- define "finmesh.analysisSeconds" -}}
{{- $rollout := (index .root.Values.services .name).rollout -}}
{{- $seconds := dict -}}
{{- if eq $rollout.strategy "blueGreen" -}}
{{- range $n := list $rollout.blueGreen.prePromotionAnalysisSeconds $rollout.blueGreen.postPromotionAnalysisSeconds -}}
{{- if gt (int $n) 0 }}{{ $_ := set $seconds (toString (int $n)) true }}{{ end -}}
{{- end -}}
{{- else -}}
{{- range $step := $rollout.canary.steps -}}
{{- if hasKey $step "analysis" }}{{ $_ := set $seconds (toString (int $step.analysis.seconds)) true }}{{ end -}}
{{- end -}}
{{- end -}}
{{- keys $seconds | sortAlpha | join "," -}}
{{- end -}}

{{/*
One AnalysisTemplate per analysis length the strategy uses ("<base>-analysis-60s"):
the metrics of files/rollouts/analysis-metrics.yaml (generated from the finmesh
engine's PromQL by `python -m finmesh.rollout.argo`), each measured
ceil(seconds / intervalSeconds) times, the thresholds declared as args whose
values are rollouts.analysis.* (a Rollout step may override one).
*/}}
{{- define "finmesh.analysisTemplates" -}}
{{- $root := .root -}}
{{- $analysis := $root.Values.rollouts.analysis -}}
{{- $path := "files/rollouts/analysis-metrics.yaml" -}}
{{- $file := fromYaml ($root.Files.Get $path) -}}
{{- if or (hasKey $file "Error") (not $file.metrics) -}}
{{- fail (printf "rollouts.engine argo: %s is missing or not valid YAML (regenerate it: python -m finmesh.rollout.argo)" $path) -}}
{{- end -}}
{{- $interval := int $analysis.intervalSeconds -}}
{{- range $s := splitList "," (include "finmesh.analysisSeconds" .) }}
{{- if $s }}
{{- $count := div (add (int $s) (sub $interval 1)) $interval }}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: {{ include "finmesh.base" $ }}-analysis-{{ $s }}s
  labels:
    {{- include "finmesh.labels" $ | nindent 4 }}
spec:
  args:
    {{- range $arg := $file.args }}
    - name: {{ $arg.name }}
      {{- if eq $arg.name "service" }}
      value: {{ $.name | quote }}
      {{- else if $arg.fromValue }}
      value: {{ index $analysis $arg.fromValue | toString | quote }}
      {{- end }}
    {{- end }}
  metrics:
    {{- range $metric := $file.metrics }}
    {{- $prometheus := merge (dict "address" $analysis.prometheusAddress) $metric.provider.prometheus }}
    {{- $spec := merge (dict "interval" (printf "%ds" $interval) "count" $count "failureLimit" (int $analysis.failureLimit) "inconclusiveLimit" (int $analysis.inconclusiveLimit) "provider" (dict "prometheus" $prometheus)) (omit $metric "provider") }}
    - {{- toYaml $spec | nindent 6 }}
    {{- end }}
{{- end }}
{{- end }}
{{- end -}}
