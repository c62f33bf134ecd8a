"""Forge's backend.memory_management: models are loaded to the GPU on demand (load_models_gpu) by the
next generation; unload_all_models() frees them."""

from modules import record

current_loaded_models = []


def unload_all_models():
    record("memory_management.unload_all_models")
    current_loaded_models.clear()


def free_memory(memory_required, device, keep_loaded=(), free_all=False):
    record(("memory_management.free_memory", free_all))


def soft_empty_cache(force=False):
    record("memory_management.soft_empty_cache")


def load_models_gpu(models, memory_required=0):
    record("memory_management.load_models_gpu")
    current_loaded_models[:] = list(models)
