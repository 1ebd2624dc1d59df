"""Pods and containers: the lifecycle behind the CRI, over shims, images, network and store."""
