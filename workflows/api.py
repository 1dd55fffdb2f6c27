"""UI-format workflow -> the API prompt the frontend (1.49) would queue for it, given the host's /object_info.

Widgets are the widget-type inputs in object_info's order, taking widgets_values in turn; a seed with
control_after_generate and an upload combo save one extra value, never sent; a dynamic combo's option adds its
widgets as "name.sub". Notes are dropped; subgraphs, muted/bypassed nodes and reroutes are refused, naming the node.
"""
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3"}
NOTES = {"Note", "MarkdownNote"}


def _widgets(specs, order):
    """[(name, spec_type, options)] of the widget inputs, in the frontend's order."""
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = specs[section][name]
            kind, opts = (spec[0], spec[1] if len(spec) > 1 else {})
            kind = "COMBO" if isinstance(kind, list) else kind
            if kind in WIDGET_TYPES and not opts.get("forceInput"):
                out.append((name, kind, opts))
    return out


def _extra_values(name, kind, opts):
    """Values the frontend saves after this widget but never sends."""
    if kind == "INT" and (opts.get("control_after_generate") or
                          (name in ("seed", "noise_seed") and opts.get("control_after_generate") is not False)):
        return 1
    if kind == "COMBO" and (opts.get("image_upload") or opts.get("video_upload")):
        return 1
    return 0


def _take(node, values, pos, widgets, inputs, prefix=""):
    for name, kind, opts in widgets:
        if pos >= len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): widgets_values has no value for {prefix + name}")
        inputs[prefix + name] = values[pos]
        pos += 1 + _extra_values(name, kind, opts)
        if kind == "COMFY_DYNAMICCOMBO_V3":
            chosen = next((o for o in opts["options"] if o["key"] == values[pos - 1]), None)
            if chosen is None:
                raise ValueError(f"node {node['id']} ({node['type']}): {name} has no option {values[pos - 1]!r}")
            sub = chosen.get("inputs", {})
            pos = _take(node, values, pos, _widgets(sub, sub), inputs, prefix + name + ".")    # in its own order
    return pos


def ui_to_api(workflow, object_info):
    links = {link[0]: link for link in workflow.get("links", [])}
    if (workflow.get("definitions") or {}).get("subgraphs"):      # the frontend saves null when there are none
        raise ValueError("subgraphs are not supported")
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in NOTES:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} ({node['type']}) is muted or bypassed; not supported")
        info = object_info.get(node["type"])
        if info is None:
            raise ValueError(f"node {node['id']} ({node['type']}): no such node in this ComfyUI")
        inputs, values = {}, node.get("widgets_values") or []
        used = _take(node, values, 0, _widgets(info["input"], info["input_order"]), inputs)
        if used != len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values for {used}")
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, origin_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
