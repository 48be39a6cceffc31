"""results.json and index.html of a `visualize` run (both written atomically).

results.json (ARCHITECTURE.md):
    {"model", "layer", "config", "kernels": [{"kernel", "activation", "activation_start",
     "recon_mse", "direction_deg", "speed_px_per_frame", "motion_fraction", "finite",
     "files": {"stage1", "texture", "motion", "reconstruction"}}, ...]}
Non-finite numbers (a kernel whose optimisation produced NaN) are written as null, and that
kernel has "finite": false.
"""
from __future__ import annotations

import html
import json
import math
import os

from kvjax.io.atomic import write_text

SUMMARY_KEYS = ("activation", "activation_start", "recon_mse", "direction_deg",
                "speed_px_per_frame", "motion_fraction")


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def kernel_entry(kernel: int, numbers: dict, files: dict, finite: bool) -> dict:
    """One kernel's results.json entry from its per-kernel numbers and file names."""
    entry = {"kernel": int(kernel)}
    entry.update({k: _num(numbers[k]) for k in SUMMARY_KEYS})
    entry["finite"] = bool(finite)
    entry["files"] = dict(files)
    return entry


def write_results(out_dir: str, model: str, layer: str, config: dict, entries: list[dict],
                  extra: dict | None = None) -> str:
    doc = {"model": model, "layer": layer, "config": config,
           "kernels": sorted(entries, key=lambda e: e["kernel"])}
    if extra:
        doc.update(extra)
    path = os.path.join(out_dir, "results.json")
    write_text(path, json.dumps(doc, indent=1, allow_nan=False))
    return path


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvjax: {title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: right; vertical-align: middle; }}
th {{ cursor: pointer; background: #f4f4f4; position: sticky; top: 0; }}
th.sorted::after {{ content: " \\25BC"; }}
td img {{ height: 112px; image-rendering: pixelated; }}
.bad {{ color: #b00; }}
</style></head><body>
<h1>{title}</h1>
<p>{subtitle}</p>
<p><a href="{sheet}"><img src="{sheet}" alt="contact sheet" style="max-width:100%"></a></p>
<p>Motion colours: hue is the direction of content motion (legend in each motion GIF), brightness
the speed. Direction is counter-clockwise from +x (right) with +y up on screen. Click a column
heading to sort.</p>
<table id="k"><thead><tr>
<th data-type="num">kernel</th><th data-type="num">activation</th><th data-type="num">start</th>
<th data-type="num">direction (deg)</th><th data-type="num">speed (px/frame)</th>
<th data-type="num" class="sorted">motion fraction</th><th data-type="num">recon MSE</th>
<th>optimal video</th><th>texture</th><th>motion</th><th>reconstruction</th>
</tr></thead><tbody>
{rows}
</tbody></table>
<script>
const table = document.getElementById("k");
function sortBy(col, desc) {{
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const val = r => {{ const v = parseFloat(r.cells[col].dataset.v); return isNaN(v) ? -Infinity : v; }};
  rows.sort((a, b) => desc ? val(b) - val(a) : val(a) - val(b));
  rows.forEach(r => body.appendChild(r));
  Array.from(table.tHead.rows[0].cells).forEach((c, i) => c.classList.toggle("sorted", i === col));
}}
Array.from(table.tHead.rows[0].cells).forEach((th, i) => {{
  if (th.dataset.type !== "num") return;
  let desc = true;
  th.addEventListener("click", () => {{ sortBy(i, desc); desc = !desc; }});
}});
sortBy(5, true);
</script>
</body></html>
"""


def _cell(x, fmt: str) -> str:
    if x is None:
        return '<td class="bad" data-v="nan">NaN</td>'
    return f'<td data-v="{x!r}">{format(x, fmt)}</td>'


def _degrees(x) -> str:
    """A direction in [0, 360) shown to the degree: 359.6 reads 0, not 360."""
    if x is None:
        return _cell(x, ".0f")
    return f'<td data-v="{x!r}">{round(x) % 360:d}</td>'


def write_index(out_dir: str, model: str, layer: str, entries: list[dict], sheet: str,
                subtitle: str = "") -> str:
    """index.html: the contact sheet and one sortable row per kernel with all its pictures."""
    rows = []
    for e in sorted(entries, key=lambda e: e["kernel"]):
        f = {k: html.escape(v) for k, v in e["files"].items()}
        imgs = "".join(f'<td><a href="{f[k]}"><img src="{f[k]}" alt="{k} {e["kernel"]}"></a></td>'
                       for k in ("stage1", "texture", "motion", "reconstruction"))
        rows.append(f'<tr><td data-v="{e["kernel"]}">{e["kernel"]}</td>'
                    + _cell(e["activation"], ".3g") + _cell(e["activation_start"], ".3g")
                    + _degrees(e["direction_deg"]) + _cell(e["speed_px_per_frame"], ".2f")
                    + _cell(e["motion_fraction"], ".2f") + _cell(e["recon_mse"], ".2g")
                    + imgs + "</tr>")
    page = _PAGE.format(title=html.escape(f"{model} / {layer}"), subtitle=html.escape(subtitle),
                        sheet=html.escape(sheet), rows="\n".join(rows))
    path = os.path.join(out_dir, "index.html")
    write_text(path, page)
    return path
