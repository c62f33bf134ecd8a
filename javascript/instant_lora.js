// Instant LoRA: WebUI front-end glue (A1111 1.10 and Forge load every javascript/*.js into the page).
//  - "Send to txt2img": puts `<lora:name:w> trigger words` into the txt2img prompt, tells Gradio
//    about the change (the WebUI's updateInput), and switches to the txt2img tab.
//  - When a training ends with a saved file, or a grid cell becomes a LoRA's preview, the Lora
//    cards refresh by themselves: this clicks the WebUI's hidden `<tab>_lora_extra_refresh_internal`
//    buttons, as its own Refresh does.
// The same file loads in node for the tests (module.exports at the bottom).

(function(root) {
    "use strict";

    var FINAL_STATES = {finished: true, cancelled: true};
    var REFRESH_IDS = ["txt2img_lora_extra_refresh_internal", "img2img_lora_extra_refresh_internal"];

    function app(doc) {
        if (doc) return doc;
        if (typeof root.gradioApp === "function") return root.gradioApp();
        return root.document;
    }

    // The prompt with the tag added once: appended after a comma, never duplicated.
    function promptWithTag(prompt, tag) {
        var current = (prompt || "").replace(/[\s,]+$/, "");
        tag = (tag || "").trim();
        if (!tag) return prompt || "";
        if (current.indexOf(tag) !== -1) return current;
        return current ? current + ", " + tag : tag;
    }

    // Set a textarea and tell Gradio (it only sees values that come with an input event).
    function setInputValue(el, value) {
        el.value = value;
        if (typeof root.updateInput === "function") {
            root.updateInput(el);
        } else {
            var Ev = root.Event || (el.ownerDocument && el.ownerDocument.defaultView && el.ownerDocument.defaultView.Event);
            el.dispatchEvent(new Ev("input", {bubbles: true}));
        }
    }

    function buttonText(btn) {
        return (btn.textContent || "").replace(/\s+/g, " ").trim();
    }

    // Click the top-level tab called `label`; the WebUI's own switch_to_txt2img() clicks button 0,
    // which is wrong when the tab order was changed in the settings, so the name is matched first.
    function switchToTab(label, doc) {
        var gapp = app(doc);
        var buttons = gapp.querySelectorAll("#tabs button");
        var match = null;
        for (var i = 0; i < buttons.length; i++) {
            if (buttonText(buttons[i]) !== label) continue;
            if (buttons[i].getAttribute("role") === "tab") {
                match = buttons[i]; // newer Gradio also renders hidden copies of the tab buttons
                break;
            }
            match = match || buttons[i];
        }
        if (match) {
            match.click();
            return "name";
        }
        if (label === "txt2img" && typeof root.switch_to_txt2img === "function") {
            root.switch_to_txt2img();
            return "switch_to_txt2img";
        }
        return null;
    }

    function sendToTxt2img(tag, doc) {
        var gapp = app(doc);
        var box = gapp.querySelector("#txt2img_prompt textarea");
        if (!box || !(tag || "").trim()) return [];
        setInputValue(box, promptWithTag(box.value, tag));
        switchToTab("txt2img", gapp);
        return [];
    }

    // The prompt of an infotext: the lines before "Negative prompt:" and the "Steps: ..." line.
    function promptOfInfotext(text) {
        var lines = (text || "").split("\n");
        var out = [];
        for (var i = 0; i < lines.length; i++) {
            if (lines[i].indexOf("Negative prompt:") === 0 || /^Steps: \d+/.test(lines[i])) break;
            out.push(lines[i]);
        }
        return out.join("\n").trim();
    }

    // Fallback for a WebUI without its paste API: the grid cell's prompt replaces the txt2img prompt.
    function sendInfotextToTxt2img(infotext, doc) {
        var gapp = app(doc);
        var box = gapp.querySelector("#txt2img_prompt textarea");
        var prompt = promptOfInfotext(infotext);
        if (!box || !prompt) return [];
        setInputValue(box, prompt);
        switchToTab("txt2img", gapp);
        return [];
    }

    // Click the WebUI's hidden refresh buttons of the Lora card pages; returns how many were found.
    function refreshLoraCards(doc) {
        var gapp = app(doc);
        var clicked = 0;
        REFRESH_IDS.forEach(function(id) {
            var el = gapp.querySelector("#" + id);
            if (!el) return;
            var btn = el.tagName === "BUTTON" ? el : (el.querySelector("button") || el);
            btn.click();
            clicked += 1;
        });
        return clicked;
    }

    // What the tab shows about the job: {state, result} or null before the tab is rendered. The
    // result is the prompt tag in the Result box (an input's value: Gradio's progress overlay text
    // never mixes into it), else the result message's rendered text.
    function jobView(doc) {
        var gapp = app(doc);
        var progress = gapp.querySelector("#il_progress [data-state]") || gapp.querySelector("#il_progress .il-progress");
        if (!progress) return null;
        var tag = gapp.querySelector("#il_result_tag textarea") || gapp.querySelector("#il_result_tag input");
        var message = gapp.querySelector("#il_result .prose");
        var result = tag ? (tag.value || "") : (message ? message.textContent || "" : "");
        return {state: progress.getAttribute("data-state") || "idle", result: result.trim()};
    }

    // Decides when a new LoRA has landed: the job reached finished/cancelled with a result that
    // this page has not seen yet. A result that was already there when the page opened does not
    // count (its card was built with the page).
    function SavedWatcher() {
        this.last = null;
    }

    SavedWatcher.prototype.update = function(view) {
        if (!view) return false;
        var prev = this.last;
        this.last = view;
        if (prev === null || !FINAL_STATES[view.state] || !view.result) return false;
        if (prev.state === view.state && prev.result === view.result) return false;
        if (prev.state === view.state && !prev.result) return false; // the page filling in an old result
        return true;
    };

    var watcher = new SavedWatcher();

    // The grid's message after "Use as preview" ("`x.preview.png` is now the card preview ..."):
    // a new one means a card's thumbnail changed on disk.
    function previewMessage(doc) {
        var el = app(doc).querySelector("#il_grid_msg");
        var text = el ? (el.textContent || "") : "";
        return text.indexOf("is now the card preview") !== -1 ? text.trim() : "";
    }

    var lastPreview = null;

    function tick(doc) {
        var preview = previewMessage(doc);
        var newPreview = lastPreview !== null && preview && preview !== lastPreview;
        lastPreview = preview;
        if (watcher.update(jobView(doc)) || newPreview) return refreshLoraCards(doc);
        return 0;
    }

    var api = {
        promptWithTag: promptWithTag, setInputValue: setInputValue, switchToTab: switchToTab,
        sendToTxt2img: sendToTxt2img, promptOfInfotext: promptOfInfotext, sendInfotextToTxt2img: sendInfotextToTxt2img,
        refreshLoraCards: refreshLoraCards, jobView: jobView,
        SavedWatcher: SavedWatcher, tick: tick
    };
    root.instantLoraSendToTxt2img = function(tag) { return sendToTxt2img(tag); };
    root.instantLoraSendInfotextToTxt2img = function(infotext) { return sendInfotextToTxt2img(infotext); };
    root.instantLora = api;

    if (typeof module !== "undefined" && module.exports) {
        module.exports = api;
    } else if (root.document && typeof root.setInterval === "function" && !root.__instantLoraWatching) {
        root.__instantLoraWatching = true;
        root.setInterval(function() {
            try {
                tick();
            } catch (e) {
                if (root.console) root.console.warn("Instant LoRA:", e);
            }
        }, 700);
    }
})(typeof window !== "undefined" ? window : globalThis);
