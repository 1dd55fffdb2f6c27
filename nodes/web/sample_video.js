// Workflows saved before Sample Video's `mode` became a dynamic combo: the frontend gives the DF widgets their
// values back by position (they still follow `mode`), but keeps the input slots saved under their old names
// ("ar_step", now "mode.ar_step"). Its own clean-up of slots without a widget removes only every other one, as it
// deletes from the list it walks. Remove the rest here; with the experimental restore-by-name setting on, also take
// the DF values from their old names. A linked old slot stays: the server moves its value under mode.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "SkyReels.SampleVideo.OldWorkflows",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "SkyReelsSampleVideo") return;
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      const names = new Set((this.widgets ?? []).map((w) => w.name));
      for (let i = (this.inputs ?? []).length - 1; i >= 0; i--) {
        const input = this.inputs[i];
        if (input.widget && !names.has(input.widget.name) && input.link == null) this.removeInput(i);
      }
      const named = info.widgets_values_named ?? {};
      for (const w of this.widgets ?? []) {
        const old = w.name.startsWith("mode.") ? w.name.slice("mode.".length) : null;
        if (old && !(w.name in named) && old in named) w.value = named[old];
      }
      return result;
    };
  },
});
