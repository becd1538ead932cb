// Keyboard shortcuts: one table for the handler and the `?` overlay. Pure, unit-tested.

export const SHORTCUTS = [
  { keys: ["/"], action: "focusSearch", help: "Focus the search box" },
  { keys: ["n", "Enter"], action: "nextMatch", help: "Zoom to the next search match (in the search box: Enter)" },
  { keys: ["N"], action: "prevMatch", help: "Zoom to the previous search match" },
  { keys: ["u", "Backspace"], action: "zoomOut", help: "Zoom out one level" },
  { keys: ["Escape", "0"], action: "reset", help: "Reset zoom (Esc also closes this overlay)" },
  { keys: ["1"], action: "viewBoth", help: "View: flame graph and table" },
  { keys: ["2"], action: "viewGraph", help: "View: flame graph only" },
  { keys: ["3"], action: "viewTable", help: "View: table only" },
  { keys: ["4"], action: "viewSandwich", help: "View: sandwich of the hovered or zoomed function" },
  { keys: ["i"], action: "invert", help: "Invert the tree (bottom-up) / undo it" },
  { keys: ["f"], action: "flip", help: "Flip orientation (icicle / flame)" },
  { keys: ["F"], action: "focusFn", help: "Focus on the hovered function" },
  { keys: ["m"], action: "mergeFn", help: "Merge the hovered function into its callers" },
  { keys: ["r"], action: "recFn", help: "Collapse recursion of the hovered function" },
  { keys: ["c"], action: "libFn", help: "Collapse the hovered function's library" },
  { keys: ["z"], action: "undo", help: "Undo the last transform" },
  { keys: ["d"], action: "compare", help: "Compare on / off" },
  { keys: ["t"], action: "theme", help: "Cycle theme (system, light, dark)" },
  { keys: ["?"], action: "help", help: "Show / hide this list" },
];

const BY_KEY = new Map(SHORTCUTS.flatMap((s) => s.keys.map((k) => [k, s.action])));

/**
 * The action for a keydown, or null. Keys typed into a text field are the field's (only Escape
 * and Enter are handled there, by the field itself); modifier chords are the browser's.
 */
export function actionFor(e, inTextField) {
  if (e.ctrlKey || e.metaKey || e.altKey) return null;
  if (inTextField) return null;
  return BY_KEY.get(e.key) ?? null;
}
