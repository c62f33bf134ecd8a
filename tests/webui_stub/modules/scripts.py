"""modules.scripts: the ScriptRunner that txt2img gives its processing object
(`p.scripts = modules.scripts.scripts_txt2img; p.script_args = args` in modules/txt2img.py).

Processing calls the runner's hooks at fixed points (see processing.py); each hook runs the
always-on scripts with their slice of `p.script_args`. The stand-in has no scripts loaded, so the
hooks do nothing, but whether `p.scripts` is set changes what processing does, as in the WebUI."""

from __future__ import annotations


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.inputs = [None]

    def _each(self, method, p, *args, **kwargs):
        for script in self.alwayson_scripts:
            getattr(script, method)(p, *args, *p.script_args[script.args_from:script.args_to], **kwargs)

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.alwayson_scripts:
            script.setup(p, *p.script_args[script.args_from:script.args_to])

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)

    def before_process_batch(self, p, **kwargs):
        self._each("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._each("process_batch", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        for script in self.alwayson_scripts:
            script.postprocess_batch(p, *p.script_args[script.args_from:script.args_to], images=images, **kwargs)

    def postprocess_batch_list(self, p, pp, **kwargs):
        for script in self.alwayson_scripts:
            script.postprocess_batch_list(p, pp, *p.script_args[script.args_from:script.args_to], **kwargs)

    def postprocess(self, p, processed):
        for script in self.alwayson_scripts:
            script.postprocess(p, processed, *p.script_args[script.args_from:script.args_to])

    def run(self, p, *args):
        return None  # no selectable script chosen (args[0] == 0)


# Set by load_scripts() at start-up in the WebUI.
scripts_txt2img = ScriptRunner()
scripts_img2img = ScriptRunner()
