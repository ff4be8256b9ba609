"""One self-contained HTML page: figures as data: URIs, an interactive slice viewer, sortable metrics.

Nothing in the page refers outside itself (no URL, no CDN, no web font, no fetch): the volumes travel as
base64 uint8 arrays (already windowed, one window per panel kind) inside a JSON script block and are drawn
to <canvas> by inline JavaScript, so the file opens from disk (file://) in any current browser, offline.
One slider (and the mouse wheel, and the arrow keys) moves every panel through the same slice; a selector
changes the plane. Clicking a metric table header sorts the runs by that column.
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import sys
from datetime import datetime, timezone

import numpy as np

from SodiumDIPLib.apps.report.content import Content
from SodiumDIPLib.apps.report.figures import format_value, metric_names
from SodiumDIPLib.apps.report.views import intensity_window, plane_view, robust_window
from SodiumDIPLib.data.volume import lps_to_ras

#: Panel kinds that share one display window across the whole page.
_LUTS = {"intensity": "gray", "proton": "gray", "error": "magma", "bias": "viridis", "magnitude": "gray",
         "scalar": "gray", "rgb": "rgb"}
_NORMAL_LETTER = {"axial": 2, "coronal": 1, "sagittal": 0}  # RAS axis along each plane's normal


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{_b64(png)}"


def _quantise(array: np.ndarray, window) -> bytes:
    lo, hi = window
    q = np.clip((np.asarray(array, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return np.rint(q * 255).astype(np.uint8).tobytes()


def _lut_bytes(name: str) -> str:
    from matplotlib import colormaps

    rgb = (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return _b64(rgb.tobytes())


def viewer_windows(content: Content) -> dict:
    """One window per panel kind for the whole volume (the viewer moves through slices, not one row)."""
    by_key = {p.key: p for p in content.montage}
    src = by_key.get("reference") or by_key.get("input") or next(
        (p for p in content.montage if p.kind == "intensity"), None)
    win = {"intensity": intensity_window(src.array, content.lesion) if src is not None else (0.0, 1.0)}
    groups = {}
    for p in content.montage + content.biases:
        groups.setdefault(p.kind, []).append(p.array)
    if "proton" in groups:
        win["proton"] = robust_window(groups["proton"])
    if "error" in groups:
        win["error"] = (0.0, max(robust_window(groups["error"], 0.0, 99.5)[1], 1e-12))
    if "bias" in groups:
        win["bias"] = robust_window(groups["bias"])
    return win


#: Above this many bytes of embedded voxels the viewer keeps every n-th voxel (the PNGs stay full size).
MAX_VIEWER_BYTES = 48 * 2 ** 20


def viewer_stride(content: Content, max_bytes: int = MAX_VIEWER_BYTES) -> int:
    """Subsampling step of the viewer's volumes so that their embedded bytes stay under ``max_bytes``."""
    per_voxel = len(content.montage) + len(content.biases) + len(content.pilots) + len(content.extras) + \
        4 * len(content.fields)  # magnitude (1) + RGB direction (3)
    total = per_voxel * int(np.prod(content.grid.shape))
    stride = 1
    while total / stride ** 3 > max_bytes:
        stride += 1
    return stride


def viewer_payload(content: Content, max_bytes: int = MAX_VIEWER_BYTES) -> dict:
    """The JSON the page's script draws from: grid, plane layouts, LUTs and windowed uint8 volumes.

    When the volumes would exceed ``max_bytes`` the viewer shows every n-th voxel along each axis (said on the
    page); its geometry (spacing, letters, positions) follows the subsampled grid.
    """
    from SodiumDIPLib.data.volume import Volume

    st = viewer_stride(content, max_bytes)
    full = content.grid
    sub = (lambda a: a[::st, ::st, ::st]) if st > 1 else (lambda a: a)
    grid = Volume(np.zeros(sub(full.array).shape, np.float32), tuple(s * st for s in full.spacing), full.origin,
                  full.direction) if st > 1 else full
    index = tuple(int(i) // st for i in content.index)
    planes = {}
    for name in content.planes:
        v = plane_view(grid, name)
        idx = np.tile(np.asarray(index, dtype=float), (v.n_slices, 1))
        idx[:, v.fixed] = np.arange(v.n_slices)
        ras = lps_to_ras(grid.index_to_physical(idx))[:, _NORMAL_LETTER[name]]
        letter = ("R", "A", "S")[_NORMAL_LETTER[name]]
        planes[name] = {
            "fixed": v.fixed, "row": v.row, "col": v.col, "flipRow": v.flip_row, "flipCol": v.flip_col,
            "nSlices": v.n_slices, "nRows": v.n_rows, "nCols": v.n_cols, "rowMm": v.row_mm, "colMm": v.col_mm,
            "letters": v.letters, "start": int(index[v.fixed]),
            "positions": [f"{letter} {x:.1f} mm" for x in ras],
        }
    win = viewer_windows(content)
    panels = []

    def add(key, title, kind, array, group, window=None):
        window = window or win.get(kind) or robust_window([array])
        panels.append({"key": key, "title": title, "kind": kind, "group": group, "lut": _LUTS[kind],
                       "window": [float(window[0]), float(window[1])], "data": _b64(_quantise(sub(array), window))})

    for p in content.montage:
        add(p.key, p.title, p.kind, p.array, "main")
    for f in content.fields:
        top = float(np.nanmax(f.magnitude))
        add(f"{f.key}-magnitude", f"|xi| {f.title}", "magnitude", f.magnitude, "estimates",
            (0.0, 1.0) if top <= 1.0 + 1e-6 else robust_window([f.magnitude]))
        if f.colour is not None:
            rgb = np.rint(np.clip(sub(f.colour), 0, 1) * 255).astype(np.uint8)
            panels.append({"key": f"{f.key}-direction", "title": f"direction {f.title}", "kind": "rgb",
                           "group": "estimates", "lut": "rgb", "window": [0.0, 1.0], "data": _b64(rgb.tobytes())})
    for p in content.biases:
        add(p.key, p.title, "bias", p.array, "estimates")
    for p in content.pilots:
        add(p.key, p.title, "scalar", p.array, "estimates")
    for p in content.extras:
        add(p.key, p.title, "scalar", p.array, "estimates")
    luts = {name: _lut_bytes(name) for name in sorted({p["lut"] for p in panels} - {"gray", "rgb"})}
    return {"size": list(grid.size_ijk), "spacing": list(grid.spacing), "stride": st, "planes": planes,
            "defaultPlane": content.planes[0], "panels": panels, "luts": luts}


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _metrics_table(runs, labels) -> str:
    names = metric_names(runs)
    cols = ["method", "preset", "seconds", "iterations", "stop"] + names
    head = "".join(f'<th data-col="{i}" tabindex="0" title="click to sort">{_esc(c)}</th>' for i, c in enumerate(cols))
    body = []
    for run, lab in zip(runs, labels):
        metrics = run.metrics or {}
        cells = [(lab, None), (run.preset, None), (f"{run.seconds:.2f}", float(run.seconds)),
                 (str(run.iterations), float(run.iterations)), (f"{run.stop_rule} @ {run.stop_iteration}", None)]
        for k in names:
            v = metrics.get(k, "-")
            num = float(v) if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) \
                and math.isfinite(float(v)) else None
            cells.append((format_value(v), num))
        tds = "".join(f'<td data-value="{c[1]!r}">{_esc(c[0])}</td>' if c[1] is not None else f"<td>{_esc(c[0])}</td>"
                      for c in cells)
        body.append(f"<tr>{tds}</tr>")
    return (f'<table id="metrics-table" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _params_tables(runs, labels) -> str:
    out = []
    for n, (run, lab) in enumerate(zip(runs, labels)):
        rows = [("method", run.method), ("preset", run.preset), ("seed", run.seed), ("device", run.device),
                ("software version", getattr(run, "version", "?")), ("stop rule", run.stop_rule),
                ("stop iteration", run.stop_iteration), ("iterations run", run.iterations),
                ("seconds", f"{run.seconds:.2f}"), ("peak memory (MB)", f"{run.peak_memory_mb:.0f}")]
        rows += [(f"param: {k}", json.dumps(v, default=str) if not isinstance(v, str) else v)
                 for k, v in sorted((run.params or {}).items())]
        trs = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
        out.append(f'<div class="params"><h3>{_esc(lab)}</h3><table id="params-{n}" class="kv">{trs}</table></div>')
    return "".join(out)


def _inputs_table(runs) -> str:
    inputs = dict(getattr(runs[0], "inputs", None) or {})
    rows = []
    for name, vol in inputs.items():
        shape = getattr(vol, "shape", None)
        spacing = getattr(vol, "spacing", None)
        if shape is None:
            continue
        sp = "" if spacing is None else " x ".join(f"{s:.3g}" for s in spacing) + " mm"
        rows.append(f"<tr><th>{_esc(name)}</th><td>{_esc(' x '.join(str(s) for s in shape[::-1]))} voxels"
                    f" (i x j x k)</td><td>{_esc(sp)}</td></tr>")
    return f'<table id="inputs-table" class="kv">{"".join(rows)}</table>' if rows else "<p>no input volumes recorded</p>"


def _figure_block(section_id: str, heading: str, png: bytes | None, missing: str, note: str = "") -> str:
    if png is None:
        body = f'<p class="missing">{_esc(missing)}</p>'
    else:
        body = f'<img id="{section_id}-png" alt="{_esc(heading)}" src="{data_uri(png)}">'
    note = f"<p class=\"note\">{_esc(note)}</p>" if note else ""
    return f'<section id="{section_id}"><h2>{_esc(heading)}</h2>{note}{body}</section>'


def build_html(content: Content, runs, images: dict, title: str = "SodiumDIP report", point_text: str = "") -> str:
    """The page as a string. ``images``: PNG bytes by name ("montage", "fields", "bias", "pilot", "extras",
    "curves", "metrics"); a missing name shows a one-line reason instead of the picture."""
    from SodiumDIPLib import __version__

    payload = json.dumps(viewer_payload(content), separators=(",", ":")).replace("</", "<\\/")
    labels = content.labels
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    versions = sorted({str(getattr(r, "version", "?")) for r in runs})
    seeds = ", ".join(f"{lab}: {r.seed}" for r, lab in zip(runs, labels))
    devices = ", ".join(f"{lab}: {r.device}" for r, lab in zip(runs, labels))
    libs = [f"Python {platform.python_version()}", f"numpy {np.__version__}"]
    if "torch" in sys.modules:
        libs.append(f"torch {sys.modules['torch'].__version__}")
    options = "".join(f'<option value="{p}">{p}</option>' for p in content.planes)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_esc(title)}</h1><p>{_esc(point_text)}</p></header>",
        '<nav><a href="#viewer">viewer</a> <a href="#montage">montage</a> <a href="#fields">guide field</a> '
        '<a href="#bias">bias field</a> <a href="#pilot">pilot</a> <a href="#curves">curves</a> '
        '<a href="#metrics">metrics</a> <a href="#parameters">parameters</a> <a href="#provenance">provenance</a></nav>',
        '<section id="viewer"><h2>Slice viewer</h2>',
        '<noscript><p class="missing">JavaScript is off: the interactive viewer needs it; the pictures below do not.'
        '</p></noscript>',
        '<div class="controls"><label>plane <select id="plane-select">' + options + "</select></label> "
        '<label>slice <input type="range" id="slice-slider" min="0" max="0" value="0"></label> '
        '<span id="slice-label"></span> <span class="hint">(mouse wheel over an image or arrow keys also move '
        "every panel)</span></div>",
        '<div id="panels-main" class="panels"></div><h3 id="estimates-heading">Estimates</h3>'
        '<div id="panels-estimates" class="panels"></div></section>',
        _figure_block("montage", "Three planes through the point", images.get("montage"), "no montage",
                      "Columns: sodium input | each result | proton | reference | |error|. One grey window per row "
                      "(from the reference, else the input); errors share one window per row."),
        _figure_block("fields", "Fused guide field", images.get("fields"),
                      "None of these methods returned a guide field.",
                      "Strength |xi| in grey; direction as colour, RGB = |R-L|, |A-P|, |S-I| components."),
        _figure_block("bias", "Estimated bias field", images.get("bias"),
                      "None of these methods estimated a bias field."),
        _figure_block("pilot", "Pilot sodium estimate", images.get("pilot"),
                      "None of these methods made a pilot estimate."),
    ]
    if images.get("extras") is not None:
        parts.append(_figure_block("extras", "Other images", images.get("extras"), ""))
    parts += [
        _figure_block("curves", "Loss and metric curves", images.get("curves"), "no curves",
                      "Dashed line and ring: the iteration each run stopped at (its stopping rule)."),
        '<section id="metrics"><h2>Metrics</h2><p class="note">Click a column header to sort. Suffix _mask: inside '
        "the support mask; _global: whole volume. Text values (e.g. 'unavailable: ...') say why a number is "
        "missing.</p>" + _metrics_table(runs, labels) + "</section>",
        f'<section id="parameters"><h2>Parameters of each run</h2>{_params_tables(runs, labels)}'
        f"<h3>Inputs</h3>{_inputs_table(runs)}</section>",
        f'<section id="provenance"><h2>Provenance</h2><table class="kv">'
        f"<tr><th>SodiumDIP version</th><td id=\"version\">{_esc(__version__)}</td></tr>"
        f"<tr><th>run versions</th><td>{_esc(', '.join(versions))}</td></tr>"
        f"<tr><th>seed</th><td id=\"seed\">{_esc(seeds)}</td></tr>"
        f"<tr><th>device</th><td id=\"device\">{_esc(devices)}</td></tr>"
        f"<tr><th>libraries</th><td>{_esc(', '.join(libs))}</td></tr>"
        f"<tr><th>created</th><td>{_esc(created)}</td></tr></table></section>",
        f'<script type="application/json" id="report-data">{payload}</script>',
        f"<script>{_JS}</script></body></html>",
    ]
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.5em}h3{font-size:1em}
nav a{margin-right:.8em}section img{max-width:100%;height:auto;background:#fff}
.controls{margin:.5em 0}.controls input[type=range]{width:22em;vertical-align:middle}.hint{color:#777;font-size:.85em}
.panels{display:flex;flex-wrap:wrap;gap:10px}.panel{background:#000;color:#eee;padding:4px;border-radius:3px}
.panel .t{font-size:.8em;text-align:center;margin-bottom:2px}.panel canvas{display:block;image-rendering:pixelated}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}th,td{border:1px solid #ccc;padding:2px 6px}
td{text-align:left}td[data-value]{text-align:right}.sortable th{cursor:pointer;background:#eee;user-select:none}
.sortable th[aria-sort=ascending]::after{content:" \\25B2"}.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.params{display:inline-block;vertical-align:top;margin-right:2em}.missing{color:#a00}.note{color:#555;font-size:.9em}
"""

_JS = r"""
(function(){
'use strict';
var D = JSON.parse(document.getElementById('report-data').textContent);
function decode(b64){var s=atob(b64),a=new Uint8Array(s.length);for(var i=0;i<s.length;i++)a[i]=s.charCodeAt(i);return a;}
var luts={};Object.keys(D.luts).forEach(function(k){luts[k]=decode(D.luts[k]);});
var n=D.size, select=document.getElementById('plane-select'), slider=document.getElementById('slice-slider');
var label=document.getElementById('slice-label'), TARGET=240;
var panels=D.panels.map(function(p){
  var box=document.createElement('div');box.className='panel';box.id='panel-'+p.key;
  var t=document.createElement('div');t.className='t';t.textContent=p.title;box.appendChild(t);
  var c=document.createElement('canvas');c.id='canvas-'+p.key;box.appendChild(c);
  document.getElementById('panels-'+p.group).appendChild(box);
  c.addEventListener('wheel',function(e){e.preventDefault();step(e.deltaY>0?1:-1);},{passive:false});
  return {meta:p,data:decode(p.data),canvas:c,off:document.createElement('canvas'),slice:null};
});
if(!panels.some(function(p){return p.meta.group==='estimates';}))document.getElementById('estimates-heading').style.display='none';
function cut(p,pl,s){ // the displayed slice, rows top to bottom (same rule as views.PlaneView.cut)
  var out=new Uint8Array(pl.nRows*pl.nCols*(p.meta.kind==='rgb'?3:1)),idx=[0,0,0],ch=p.meta.kind==='rgb'?3:1,o=0;
  idx[pl.fixed]=s;
  for(var y=0;y<pl.nRows;y++){idx[pl.row]=pl.flipRow?pl.nRows-1-y:y;
    for(var x=0;x<pl.nCols;x++){idx[pl.col]=pl.flipCol?pl.nCols-1-x:x;
      var off=(idx[0]+n[0]*(idx[1]+n[1]*idx[2]))*ch;
      for(var c=0;c<ch;c++)out[o++]=p.data[off+c];}}
  return out;
}
function niceLength(mm){var e=Math.floor(Math.log10(mm)),m=[5,2,1];for(var i=0;i<3;i++){if(m[i]*Math.pow(10,e)<=mm)return m[i]*Math.pow(10,e);}return Math.pow(10,e);}
function draw(p,pl,s){
  var v=cut(p,pl,s);p.slice=v;
  var off=p.off;off.width=pl.nCols;off.height=pl.nRows;
  var octx=off.getContext('2d'),img=octx.createImageData(pl.nCols,pl.nRows),d=img.data,lut=luts[p.meta.lut];
  for(var q=0,m=pl.nCols*pl.nRows;q<m;q++){
    var r,g,b;
    if(p.meta.kind==='rgb'){r=v[3*q];g=v[3*q+1];b=v[3*q+2];}
    else if(lut){var k=v[q]*3;r=lut[k];g=lut[k+1];b=lut[k+2];}
    else{r=g=b=v[q];}
    d[4*q]=r;d[4*q+1]=g;d[4*q+2]=b;d[4*q+3]=255;}
  octx.putImageData(img,0,0);
  var wmm=pl.nCols*pl.colMm,hmm=pl.nRows*pl.rowMm,ppm=TARGET/Math.max(wmm,hmm);
  var c=p.canvas;c.width=Math.max(1,Math.round(wmm*ppm));c.height=Math.max(1,Math.round(hmm*ppm));
  var ctx=c.getContext('2d');ctx.imageSmoothingEnabled=false;ctx.drawImage(off,0,0,c.width,c.height);
  ctx.font='bold 12px sans-serif';ctx.textAlign='center';ctx.textBaseline='middle';
  ctx.lineWidth=3;ctx.strokeStyle='#000';ctx.fillStyle='#ff0';
  [[pl.letters.left,9,c.height/2],[pl.letters.right,c.width-9,c.height/2],[pl.letters.top,c.width/2,9],
   [pl.letters.bottom,c.width/2,c.height-9]].forEach(function(a){ctx.strokeText(a[0],a[1],a[2]);ctx.fillText(a[0],a[1],a[2]);});
  var L=niceLength(0.3*wmm),px=L*ppm,x1=c.width-8,y=c.height-22;
  ctx.fillStyle='#000';ctx.fillRect(x1-px-1,y-1,px+2,5);ctx.fillStyle='#fff';ctx.fillRect(x1-px,y,px,3);
  ctx.font='10px sans-serif';ctx.textBaseline='bottom';ctx.lineWidth=2;ctx.strokeText(L+' mm',x1-px/2,y-1);
  ctx.fillText(L+' mm',x1-px/2,y-1);
}
function render(){
  var pl=D.planes[select.value],s=+slider.value;
  label.textContent='slice '+(s+1)+' / '+pl.nSlices+' ('+pl.positions[s]+')'+
    (D.stride>1?' \u2014 every '+D.stride+'th voxel shown (file size); the pictures below are full resolution':'');
  panels.forEach(function(p){draw(p,pl,s);});
}
function setPlane(){var pl=D.planes[select.value];slider.max=pl.nSlices-1;slider.value=pl.start;render();}
function step(d){var v=Math.min(+slider.max,Math.max(0,+slider.value+d));if(v!==+slider.value){slider.value=v;render();}}
select.value=D.defaultPlane;select.addEventListener('change',setPlane);slider.addEventListener('input',render);
setPlane();
window.sodiumdipViewer={slice:function(key){var p=panels.filter(function(q){return q.meta.key===key;})[0];return p?Array.from(p.slice):null;},
  state:function(){return {plane:select.value,slice:+slider.value};}};
// sortable tables: click (or Enter on) a header; numbers sort numerically, text alphabetically
Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(table){
  var ths=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(ths,function(th,col){
    function sort(){
      var asc=th.getAttribute('aria-sort')!=='ascending';
      Array.prototype.forEach.call(ths,function(h){h.removeAttribute('aria-sort');});
      th.setAttribute('aria-sort',asc?'ascending':'descending');
      var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var ca=a.cells[col],cb=b.cells[col],va=ca.getAttribute('data-value'),vb=cb.getAttribute('data-value'),r;
        if(va!==null&&vb===null)return -1;if(va===null&&vb!==null)return 1;  // text ('unavailable') last
        r=(va!==null)?parseFloat(va)-parseFloat(vb):ca.textContent.localeCompare(cb.textContent);
        return asc?r:-r;});
      rows.forEach(function(r){body.appendChild(r);});
    }
    th.addEventListener('click',sort);th.addEventListener('keydown',function(e){if(e.key==='Enter')sort();});
  });
});
})();
"""
