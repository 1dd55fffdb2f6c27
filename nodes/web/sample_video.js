// Workflows saved before Sample Video's `mode` became a dynamic combo (and before its last widget, `noise`): the
// frontend gives the DF widgets their values back by position (they still follow `mode`), but keeps the input
// slots saved under their old names ("ar_step", now "mode.ar_step"), and its own clean-up of slots without a widget
// removes only every other one (it deletes from the list it walks), linked or not. Here each old slot goes: its
// link, if any, moves to the new slot; and where a workflow holds values by name (the frontend's restore-by-name
// setting), the old names are read. Which old slot a link fed is read from the saved workflow: frontend 1.58 puts
// such a link on another slot than the one it was saved on.
import { app } from "../../scripts/app.js";

function moveLink(node, from, to) {
  const link = node.graph?.links?.get?.(node.inputs[from].link) ?? node.graph?.links?.[node.inputs[from].link];
  if (!link || node.inputs[to].link != null) return;
  node.inputs[to].link = link.id;
  link.target_slot = to;
  node.inputs[from].link = null;
}

app.registerExtension({
  name: "SkyReels.SampleVideo.OldWorkflows",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "SkyReelsSampleVideo") return;
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      const names = new Set((this.widgets ?? []).map((w) => w.name));
      const fed = new Map();      // link id -> the old widget slot it was saved on
      for (const saved of info.inputs ?? []) {
        if (saved.link != null && saved.widget && !names.has(saved.name)) fed.set(saved.link, saved.name);
      }
      for (let i = (this.inputs ?? []).length - 1; i >= 0; i--) {
        const old = fed.get(this.inputs[i].link);
        const to = this.inputs.findIndex((x) => x.name === `mode.${old}`);
        if (old !== undefined && to >= 0 && to !== i) moveLink(this, i, to);
      }
      for (let i = (this.inputs ?? []).length - 1; i >= 0; i--) {
        const input = this.inputs[i];
        if (input.widget && !names.has(input.widget.name) && input.link == null) this.removeInput(i);
      }
      const named = info.widgets_values_named ?? {};
      for (const w of this.widgets ?? []) {
        const old = w.name.startsWith("mode.") ? w.name.slice("mode.".length) : null;
        if (old && !(w.name in named) && old in named) w.value = named[old];
      }
      // Such a workflow in standard mode still holds the DF values after `mode`, where `noise` now sits.
      const noise = this.widgets?.find((w) => w.name === "noise");
      if (noise && !noise.options?.values?.includes(noise.value)) noise.value = noise.options.values[0];
      return result;
    };
  },
});
