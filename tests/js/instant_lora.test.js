// node --test tests/js : the WebUI glue in javascript/instant_lora.js against a small page with the
// WebUI's element ids (txt2img prompt, top-level tabs, the Lora cards' hidden refresh buttons) and
// the tab's own progress/result elements.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const {h} = require("./fake_dom.js");

const glue = require(path.join(__dirname, "..", "..", "javascript", "instant_lora.js"));

// The parts of the WebUI page the glue touches, laid out as Gradio 3.41 renders them.
function webuiPage({tabOrder = ["txt2img", "img2img", "Extras", "Instant LoRA"], prompt = ""} = {}) {
    const textarea = h("textarea", {value: prompt});
    const tabButtons = tabOrder.map((label) => h("button", {}, [], label));
    const refreshT2i = h("button", {id: "txt2img_lora_extra_refresh_internal"});
    const refreshI2i = h("button", {id: "img2img_lora_extra_refresh_internal"});
    const progress = h("div", {id: "il_progress"}, [h("div", {class: "il-progress", "data-state": "idle"}, [], "Not started.")]);
    const result = h("div", {id: "il_result"}, [h("div", {class: "status-tracker"}, [], "0.1s")]);  // Gradio's overlay text
    const tagBox = h("textarea", {value: ""});
    const resultTag = h("div", {id: "il_result_tag"}, [h("label", {}, [tagBox])]);
    const innerTabs = h("div", {class: "tabs", id: "txt2img_extra_tabs"}, [h("div", {class: "tab-nav"}, [h("button", {}, [], "Lora")])]);
    const root = h("gradio-app", {}, [
        h("div", {id: "tabs", class: "tabs"}, [
            h("div", {class: "tab-nav scroll-hide"}, tabButtons),
            h("div", {id: "tab_txt2img"}, [
                h("div", {id: "txt2img_prompt"}, [h("label", {}, [textarea])]),
                innerTabs, refreshT2i,
            ]),
            h("div", {id: "tab_img2img"}, [refreshI2i]),
            h("div", {id: "tab_instant_lora"}, [progress, result, resultTag]),
        ]),
    ]);
    const setJob = (state, tag) => {
        progress.children[0].setAttribute("data-state", state);
        tagBox.value = tag;
        result.children[0].textContent = `${Math.random().toFixed(1)}s`; // the overlay changes at every poll
    };
    return {root, textarea, tabButtons, refreshT2i, refreshI2i, setJob};
}

test("the tag is appended to the prompt once, after a comma", () => {
    assert.equal(glue.promptWithTag("", "<lora:a:0.8> shpz"), "<lora:a:0.8> shpz");
    assert.equal(glue.promptWithTag("a cat, ", "<lora:a:0.8> shpz"), "a cat, <lora:a:0.8> shpz");
    assert.equal(glue.promptWithTag("a cat, <lora:a:0.8> shpz", "<lora:a:0.8> shpz"), "a cat, <lora:a:0.8> shpz");
    assert.equal(glue.promptWithTag("a cat", "  "), "a cat");
});

test("Send to txt2img fills the prompt, tells Gradio and switches to txt2img by name", () => {
    const page = webuiPage({tabOrder: ["Instant LoRA", "img2img", "txt2img"], prompt: "a photo"});
    const seen = [];
    globalThis.updateInput = (el) => seen.push(el);
    try {
        assert.deepEqual(glue.sendToTxt2img("<lora:my_lora:0.8> shpz", page.root), []);
    } finally {
        delete globalThis.updateInput;
    }
    assert.equal(page.textarea.value, "a photo, <lora:my_lora:0.8> shpz");
    assert.deepEqual(seen, [page.textarea]); // Gradio only sees values announced through updateInput
    assert.deepEqual(page.tabButtons.map((b) => b.clicks), [0, 0, 1]); // by name, not button 0
});

test("a real tab button (role=tab) wins over hidden copies with the same text", () => {
    const copy = h("button", {tabindex: "-1"}, [], "txt2img");
    const real = h("button", {role: "tab"}, [], "txt2img");
    const page = h("gradio-app", {}, [h("div", {id: "tabs"}, [h("div", {class: "overflow"}, [copy]), h("div", {role: "tablist"}, [real])])]);
    assert.equal(glue.switchToTab("txt2img", page), "name");
    assert.deepEqual([copy.clicks, real.clicks], [0, 1]);
});

test("without the WebUI's updateInput an input event bubbles from the textarea", () => {
    const page = webuiPage();
    let events = 0;
    page.root.addEventListener("input", () => (events += 1));
    glue.sendToTxt2img("<lora:x:0.8>", page.root);
    assert.equal(page.textarea.value, "<lora:x:0.8>");
    assert.equal(events, 1);
    assert.equal(page.textarea.events[0].type, "input");
});

test("a renamed txt2img tab falls back to the WebUI's switch_to_txt2img", () => {
    const page = webuiPage({tabOrder: ["Texte vers image", "Image vers image"]});
    let called = 0;
    globalThis.switch_to_txt2img = () => (called += 1);
    try {
        assert.equal(glue.switchToTab("txt2img", page.root), "switch_to_txt2img");
    } finally {
        delete globalThis.switch_to_txt2img;
    }
    assert.equal(called, 1);
});

test("nothing happens without a tag or without the prompt box", () => {
    const page = webuiPage({prompt: "keep"});
    glue.sendToTxt2img("", page.root);
    assert.equal(page.textarea.value, "keep");
    assert.deepEqual(glue.sendToTxt2img("<lora:x:1>", h("div")), []);
});

test("the Lora cards refresh once when a run ends with a saved file", () => {
    const page = webuiPage();
    const w = new glue.SavedWatcher();
    const step = () => (w.update(glue.jobView(page.root)) ? glue.refreshLoraCards(page.root) : 0);
    assert.equal(step(), 0); // idle page
    page.setJob("running", "");
    assert.equal(step(), 0);
    page.setJob("finished", "<lora:my_lora:0.8> shpz");
    assert.equal(step(), 2); // txt2img and img2img card pages
    assert.equal(page.refreshT2i.clicks, 1);
    assert.equal(page.refreshI2i.clicks, 1);
    assert.equal(step(), 0); // the same result again: no second refresh
    page.setJob("finished", "<lora:my_lora:0.8> shpz"); // later polls (Gradio's overlay text changes meanwhile)
    assert.equal(step(), 0);
    page.setJob("running", "");
    step();
    page.setJob("cancelled", "<lora:b-step00000004:0.8>");
    assert.equal(step(), 2);
    page.setJob("running", "");
    step();
    page.setJob("failed", "");
    assert.equal(step(), 0); // nothing was saved
});

test("a result already there when the page opens does not refresh the cards", () => {
    const page = webuiPage();
    const w = new glue.SavedWatcher();
    assert.equal(w.update(null), false); // tab not rendered yet
    page.setJob("finished", "");
    assert.equal(w.update(glue.jobView(page.root)), false); // first render of a finished job
    page.setJob("finished", "<lora:old:0.8>");
    assert.equal(w.update(glue.jobView(page.root)), false); // the first poll fills in the old result
    page.setJob("finished", "<lora:new:0.8>"); // a run that began and ended between polls
    assert.equal(w.update(glue.jobView(page.root)), true);
});

test("a wrapper element around the refresh button is clicked through to its button", () => {
    const inner = h("button");
    const page = h("gradio-app", {}, [h("div", {id: "txt2img_lora_extra_refresh_internal"}, [inner])]);
    assert.equal(glue.refreshLoraCards(page), 1);
    assert.equal(inner.clicks, 1);
});

test("a grid cell's infotext gives its prompt, without the negative prompt and settings lines", () => {
    const info = "<lora:run-000001:0.4>, shpz, red\nsquare\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 3";
    assert.equal(glue.promptOfInfotext(info), "<lora:run-000001:0.4>, shpz, red\nsquare");
    assert.equal(glue.promptOfInfotext("a cat\nSteps: 20, Sampler: Euler a"), "a cat");
    assert.equal(glue.promptOfInfotext(""), "");
});

test("without the WebUI's paste, a cell's prompt replaces the txt2img prompt and txt2img opens", () => {
    const page = webuiPage({tabOrder: ["txt2img", "Instant LoRA"], prompt: "old prompt"});
    assert.deepEqual(glue.sendInfotextToTxt2img("<lora:run:0.7>, shpz\nSteps: 20, Seed: 3", page.root), []);
    assert.equal(page.textarea.value, "<lora:run:0.7>, shpz");
    assert.deepEqual(page.tabButtons.map((b) => b.clicks), [1, 0]);
    glue.sendInfotextToTxt2img("", page.root);  // no cell picked yet: nothing changes
    assert.equal(page.textarea.value, "<lora:run:0.7>, shpz");
});

test("a grid cell made the preview refreshes the cards once; an old message does not", () => {
    const msg = h("div", {id: "il_grid_msg"}, [], "`old.preview.png` is now the card preview, preferred weight 1");
    const refresh = h("button", {id: "txt2img_lora_extra_refresh_internal"});
    const page = h("gradio-app", {}, [msg, refresh]);
    glue.tick(page);  // the message was there when the page opened
    glue.tick(page);
    assert.equal(refresh.clicks, 0);
    msg.textContent = "`run.preview.png` is now the card preview, preferred weight 0.7";
    glue.tick(page);
    glue.tick(page);
    assert.equal(refresh.clicks, 1);
    msg.textContent = "2 x 4 grid, seed 3";  // a new grid: nothing to refresh
    glue.tick(page);
    assert.equal(refresh.clicks, 1);
});

test("the script defines the globals the Send buttons' Gradio js= call", () => {
    assert.equal(typeof globalThis.instantLoraSendInfotextToTxt2img, "function");
    assert.equal(typeof globalThis.instantLoraSendToTxt2img, "function");
    assert.equal(typeof globalThis.instantLora.tick, "function");
});
