"""Hosts: what differs between the places a run is started from.

A host provides the folders (models, Lora, data), the checkpoint list, an exclusive hold on the
GPU for work outside training, hooks around a training (the WebUI's VRAM hand-off), progress
mirroring, and the Test panel's renderer. The interface is `base.Host`; the standalone app's host
is `standalone.StandaloneHost`; the WebUI's lives in `webui/`.
"""
