{{/*
HPA and PDB exist only for a color that runs (replicas > 0). With an HPA the
Deployment has no replicas field, so helm upgrades never fight the HPA; the
color's replicas value becomes the HPA's minimum. Under rollouts.engine=argo
they are called with .color "": one HPA scaling the service's Rollout (from
activeColor's replicas) and one PDB over all its pods, whatever their hash.
*/}}
{{- define "finmesh.hpa" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $c := index $svc (.color | default $svc.activeColor) -}}
{{- $name := include "finmesh.base" . -}}
{{- with .color }}{{ $name = printf "%s-%s" $name . }}{{ end -}}
{{- if and $svc.autoscaling.enabled (gt (int $c.replicas) 0) -}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    {{- if .color }}
    apiVersion: apps/v1
    kind: Deployment
    {{- else }}
    apiVersion: argoproj.io/v1alpha1
    kind: Rollout
    {{- end }}
    name: {{ $name }}
  minReplicas: {{ $c.replicas }}
  maxReplicas: {{ $svc.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $svc.autoscaling.targetCPUUtilizationPercentage }}
  behavior:
    scaleDown:
      # Scale-in drains connections; do it slowly.
      stabilizationWindowSeconds: 300
      policies:
        - type: Pods
          value: 1
          periodSeconds: 60
{{- end -}}
{{- end -}}

{{- define "finmesh.pdb" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $c := index $svc (.color | default $svc.activeColor) -}}
{{- $name := include "finmesh.base" . -}}
{{- with .color }}{{ $name = printf "%s-%s" $name . }}{{ end -}}
{{- if and $svc.pdb.enabled (gt (int $c.replicas) 0) -}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- include "finmesh.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $svc.pdb.maxUnavailable }}
  # Crash-looping pods may always be evicted; they serve nothing.
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "finmesh.selectorLabels" . | nindent 6 }}
      {{- with .color }}
      finmesh.io/color: {{ . }}
      {{- end }}
{{- end -}}
{{- end -}}
