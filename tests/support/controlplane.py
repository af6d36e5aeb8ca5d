"""Fixtures for the real control plane (etcd, kube-apiserver, ...). Filled in by the control-plane work."""
