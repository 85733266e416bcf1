"""Contact sheets of the segmentation: cells with their cell (yellow) and nucleus (cyan) outlines.

CellProfiler users look at their masks before trusting the measurements; ``blastscan masks`` does the
same for the masks every handcrafted family reads. Each tile is captioned with the label (or, for the
predictions CSV of ``blastscan score``, the call and P(ALL)), the subject and the N:C area ratio; a cell
whose mask quality is flagged gets a red caption and frame, a cell that cannot be segmented a red
"failed" tile with the reason. ``blastscan view`` draws the same outlines in the same colours.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from blastscan._io import atomic_write_bytes
from blastscan.dataset import load_image
from blastscan.errors import BlastscanError
from blastscan.features.segmentation import build_context, mask_quality

__all__ = ["SheetResult", "CELL_RGB", "NUCLEUS_RGB", "pick_cells", "render_tile", "contact_sheet", "masks_sheet",
           "with_scores"]

#: Outline colours of the cell and its nucleus, on contact sheets and in ``blastscan view`` (its CSS
#: swatches use the same values).
CELL_RGB = (255, 215, 0)  # yellow
NUCLEUS_RGB = (0, 229, 255)  # cyan
FLAG_RGB = (255, 60, 60)
BACKGROUND_RGB = (34, 34, 34)


@dataclass
class SheetResult:
    """What :func:`masks_sheet` drew: the file, the cells (with N:C and flags) and summary numbers."""

    path: Path
    cells: pd.DataFrame  # path, subject, label, call, p_all, nc_ratio, flags (";"-joined), failed (reason or "")
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c = self.cells
        ok = c[c["failed"] == ""]
        lines = [f"contact sheet: {self.path} ({len(c)} cells, {c['subject'].nunique()} subjects)"]
        if len(ok):
            by = ok.groupby("label", dropna=False)["nc_ratio"].median()
            lines.append("median N:C " + ", ".join(f"{str(k).upper()} {v:.2f}" for k, v in by.items())
                         + f"; overall {ok['nc_ratio'].median():.2f}")
        flagged = int((c["flags"] != "").sum())
        lines.append(f"flagged masks: {flagged}; failed segmentations: {int((c['failed'] != '').sum())}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def pick_cells(df: pd.DataFrame, n: int = 48, subjects: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` rows: both labels in equal shares when present, spread round-robin over subjects."""
    if subjects:
        wanted = {str(s) for s in subjects}
        unknown = wanted - set(df["subject"].dropna().astype(str))
        if unknown:
            raise BlastscanError("--subjects", f"not in the dataset: {', '.join(sorted(unknown))}")
        df = df[df["subject"].astype(str).isin(wanted)]
    if len(df) == 0:
        raise BlastscanError("masks", "no images to show")
    df = df.sample(frac=1.0, random_state=seed)
    labels = df["label"].fillna(df["pred"] if "pred" in df else "?").fillna("?")
    per_label = {lab: g for lab, g in df.groupby(labels, sort=True)}
    quota = {lab: n // len(per_label) + (i < n % len(per_label)) for i, lab in enumerate(per_label)}
    picked = []
    for lab, g in per_label.items():
        g = g.assign(_rank=g.groupby(g["subject"].fillna("?").astype(str)).cumcount())
        picked.append(g.sort_values(["_rank"], kind="stable").head(quota[lab]).drop(columns="_rank"))
    out = pd.concat(picked)
    if len(out) < n:  # one label short: fill from the rest
        rest = df.drop(out.index)
        out = pd.concat([out, rest.head(n - len(out))])
    return out.sort_values(["label", "subject", "path"], na_position="last")


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def render_tile(image: np.ndarray, tile: int = 180):
    """One cell's tile (``tile`` px square, RGB uint8), its N:C ratio and its quality flags.

    Raises ``BlastscanError`` when the cell cannot be segmented.
    """
    ctx = build_context(image)
    values, reasons = mask_quality(ctx)
    h, w = ctx.cell.shape
    scale = (tile - 4) / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = np.asarray(Image.fromarray(np.ascontiguousarray(ctx.rgb)).resize(size, Image.BILINEAR)).copy()
    for mask, colour in ((ctx.cell, CELL_RGB), (ctx.nucleus, NUCLEUS_RGB)):
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
        rgb[_outline(m)] = colour
    out = np.zeros((tile, tile, 3), np.uint8)
    y0, x0 = (tile - size[1]) // 2, (tile - size[0]) // 2
    out[y0:y0 + size[1], x0:x0 + size[0]] = rgb
    return out, values["nc_ratio"], reasons


def contact_sheet(tiles: list[tuple[np.ndarray | None, str, bool]], columns: int = 8, tile: int = 180) -> bytes:
    """A PNG of captioned tiles: ``(image or None, caption, flagged)`` in reading order."""
    caption_h = 14
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * (tile + 4) + 4, rows * (tile + caption_h + 6) + 22 + 4), BACKGROUND_RGB)
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 5), "cell outline: yellow   nucleus outline: cyan   red: mask flagged or failed", fill=(220, 220, 220))
    for k, (img, caption, flagged) in enumerate(tiles):
        r, c = divmod(k, columns)
        x, y = 4 + c * (tile + 4), 22 + 4 + r * (tile + caption_h + 6)
        if img is not None:
            sheet.paste(Image.fromarray(img), (x, y + caption_h))
        if flagged or img is None:
            draw.rectangle([x, y + caption_h, x + tile - 1, y + caption_h + tile - 1], outline=FLAG_RGB)
        draw.text((x + 2, y + 1), caption, fill=FLAG_RGB if (flagged or img is None) else (230, 230, 230))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def masks_sheet(manifest_df: pd.DataFrame, out: str | os.PathLike, *, n: int = 48,
                subjects: Sequence[str] | None = None, seed: int = 0, columns: int = 8, tile: int = 150) -> SheetResult:
    """Draw a contact sheet of ``n`` cells of ``manifest_df`` (see :func:`pick_cells`) into ``out`` (PNG).

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest (``path``, ``label``, ``subject``), e.g. from ``build_manifest`` on a dataset or on
        the inputs a bundle scored.
    out : path
        PNG file, written atomically.
    n, subjects, seed, columns, tile
        How many cells, which subjects only, the sampling seed, tiles per row, tile size in px.
    """
    if n < 1:
        raise BlastscanError("--n", "must be at least 1")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise BlastscanError(str(out), "the contact sheet is a PNG: give a file name ending in .png")
    rows = pick_cells(manifest_df, n, subjects, seed)
    tiles, records = [], []
    for row in rows.to_dict("records"):
        subject = "?" if pd.isna(row.get("subject")) else str(row["subject"])
        label = "?" if pd.isna(row.get("label")) else str(row["label"])
        call = "" if pd.isna(row.get("pred")) else str(row["pred"])
        p = float(row["p_all"]) if pd.notna(row.get("p_all")) else np.nan
        # a scored cell shows its call and P(ALL) (and its label when known); a dataset's cell its label
        head = f"{call.upper()} P={p:.2f}" + (f" ({label})" if label != "?" else "") if call else label
        try:
            img, nc, reasons = render_tile(load_image(row["path"]), tile)
        except BlastscanError as exc:
            tiles.append((None, f"{head} {subject}: failed", True))
            records.append((row["path"], subject, label, call, p, np.nan, "", exc.why or str(exc)))
            continue
        tiles.append((img, f"{head} {subject} N:C {nc:.2f}" + (" !" if reasons else ""), bool(reasons)))
        records.append((row["path"], subject, label, call, p, nc, "; ".join(reasons), ""))
    data = contact_sheet(tiles, columns, tile)
    try:
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, data)
    except OSError as exc:
        raise BlastscanError(str(out), f"cannot write ({exc.strerror or exc})") from None
    cells = pd.DataFrame(records, columns=["path", "subject", "label", "call", "p_all", "nc_ratio", "flags", "failed"])
    notes = []
    if len(rows) < n:
        notes.append(f"only {len(rows)} cells available (asked for {n})")
    return SheetResult(path=out, cells=cells, notes=notes)


def with_scores(manifest_df: pd.DataFrame, inputs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """``manifest_df`` with ``p_all`` and ``pred`` from the inputs that are predictions CSVs of
    ``blastscan score`` (columns ``path``, ``p_all``, ``pred``), matched by absolute path; unchanged when
    none is."""
    scored = []
    for src in inputs:
        if str(src).lower().endswith(".csv") and os.path.isfile(src):
            try:
                t = pd.read_csv(src, dtype={"pred": str})
            except (OSError, ValueError, pd.errors.ParserError):
                continue  # the manifest builder reports an unusable CSV itself
            if {"path", "p_all", "pred"} <= set(t.columns):
                base = os.path.dirname(os.path.abspath(src))
                paths = [p if os.path.isabs(str(p)) else os.path.join(base, str(p)) for p in t["path"]]
                scored.append(pd.DataFrame({"path": [os.path.abspath(p) for p in paths],
                                            "p_all": pd.to_numeric(t["p_all"], errors="coerce"),
                                            "pred": t["pred"].where(t["pred"].isin(["all", "hem"]))}))
    if not scored:
        return manifest_df
    table = pd.concat(scored).drop_duplicates("path", keep="last").set_index("path")
    key = manifest_df["path"].map(lambda p: os.path.abspath(str(p)))
    return manifest_df.assign(p_all=key.map(table["p_all"]).to_numpy(), pred=key.map(table["pred"]).to_numpy())
