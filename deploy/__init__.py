"""Deployment as code: Kubernetes manifests and Strimzi topics generated from the topic catalog."""
