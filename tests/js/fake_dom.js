// A tiny DOM for the node tests: elements with ids, classes, attributes, text, value, click and
// events, and querySelector(All) for the selectors the WebUI glue uses (tag, #id, .class, [attr],
// [attr=value], descendant and child combinators, comma lists).
"use strict";

class El {
    constructor(tag, attrs = {}, children = [], text = "") {
        this.tagName = tag.toUpperCase();
        this.attributes = {...attrs};
        this.children = [];
        this.parentNode = null;
        this._text = text;
        this.value = attrs.value || "";
        this.clicks = 0;
        this.listeners = {};
        this.events = [];
        this.onclick = null;
        children.forEach((c) => this.append(c));
    }
    get id() { return this.attributes.id || ""; }
    get classList() { return (this.attributes.class || "").split(/\s+/).filter(Boolean); }
    get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
    set textContent(v) { this._text = v; this.children = []; }
    append(child) { child.parentNode = this; this.children.push(child); return child; }
    getAttribute(name) { return name in this.attributes ? this.attributes[name] : null; }
    setAttribute(name, v) { this.attributes[name] = String(v); }
    addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
    dispatchEvent(ev) {
        this.events.push(ev);
        let node = this;
        while (node) {
            (node.listeners[ev.type] || []).forEach((fn) => fn(ev));
            node = ev.bubbles ? node.parentNode : null;
        }
        return true;
    }
    click() {
        this.clicks += 1;
        if (this.onclick) this.onclick();
        this.dispatchEvent({type: "click", bubbles: true, target: this});
    }
    *descendants() {
        for (const c of this.children) {
            yield c;
            yield* c.descendants();
        }
    }
    querySelectorAll(selector) {
        const found = [];
        for (const el of this.descendants()) {
            if (selector.split(",").some((s) => matches(el, s.trim(), this))) found.push(el);
        }
        return found;
    }
    querySelector(selector) { return this.querySelectorAll(selector)[0] || null; }
}

function matchSimple(el, simple) {
    const re = /([a-zA-Z][\w-]*)|#([\w-]+)|\.([\w-]+)|\[([\w-]+)(?:=["']?([^\]"']*)["']?)?\]/g;
    let m;
    let consumed = 0;
    while ((m = re.exec(simple)) !== null) {
        consumed += m[0].length;
        if (m[1] && el.tagName !== m[1].toUpperCase()) return false;
        if (m[2] && el.id !== m[2]) return false;
        if (m[3] && !el.classList.includes(m[3])) return false;
        if (m[4] && (el.getAttribute(m[4]) === null || (m[5] !== undefined && el.getAttribute(m[4]) !== m[5]))) return false;
    }
    if (consumed !== simple.length) throw new Error(`fake_dom cannot parse selector part '${simple}'`);
    return true;
}

function matches(el, selector, scope) {
    const parts = selector.replace(/\s*>\s*/g, " > ").split(/\s+/);
    // right to left: el must match the last part, its ancestors the earlier ones
    function check(node, i) {
        if (!matchSimple(node, parts[i])) return false;
        if (i === 0) return true;
        if (parts[i - 1] === ">") {
            const parent = node.parentNode;
            return !!parent && parent !== scope.parentNode && check(parent, i - 2);
        }
        for (let a = node.parentNode; a && a !== scope.parentNode; a = a.parentNode) {
            if (check(a, i - 1)) return true;
        }
        return false;
    }
    return check(el, parts.length - 1);
}

const h = (tag, attrs, children, text) => new El(tag, attrs || {}, children || [], text || "");

module.exports = {El, h};
