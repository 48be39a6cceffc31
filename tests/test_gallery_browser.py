"""Headless Chromium opens a real run's index.html from disk and every image loads (slow).

Needs Debian's `chromium` package (apt-get install chromium).
"""
import re
import shutil
import subprocess
import sys

import pytest

CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const rows = document.querySelectorAll("#k tbody tr").length;
  const p = document.createElement("pre"); p.id = "kvjax-check";
  p.textContent = `images ${ok}/${imgs.length} rows ${rows}`;
  document.body.appendChild(p);
});
</script></body>"""


@pytest.mark.slow
def test_every_image_of_the_gallery_loads(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "this test needs Debian's chromium: apt-get install chromium"
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "kvjax.cli", "visualize", "--kernels", "0-2",
                        "--size", "4,32,32", "--steps1", "5", "--steps2", "5", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    page = (out / "index.html").read_text()
    (out / "check.html").write_text(page.replace("</body>", CHECK))  # same folder, same files
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--allow-file-access-from-files", "--dump-dom",
         (out / "check.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"images (\d+)/(\d+) rows (\d+)", dom)
    assert m, dom[-2000:]
    ok, total, rows = map(int, m.groups())
    assert rows == 3 and total == 1 + 3 * 4 and ok == total, m.group(0)
