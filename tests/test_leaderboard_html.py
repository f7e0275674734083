"""leaderboard.html in a real browser (Debian's chromium, headless): it loads without a script
error and clicking a header reorders the rows. Skipped where no chromium is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from recozoo.report.__main__ import main as report_main
from test_report import noisy, write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

#: before the page's own script: collect every script error
_CATCH = ("<script>window.errors=[];window.addEventListener('error',"
          "function(e){window.errors.push(String(e.message));});</script>")
#: after it: click headers like a user and write the row order after each click into the page
_PROBE = """<script>(function(){
var table=document.querySelector('table.lb'),heads=Array.from(table.tHead.rows[0].cells);
function header(name){return heads.find(function(th){return th.textContent===name;});}
function models(){var i=header('model').cellIndex;
  return Array.from(table.tBodies[0].rows).map(function(r){return r.cells[i].textContent;});}
var seen={initial:models()};
header('model').click();seen.model=models();
header('test/ndcg@10').click();seen.ndcg_first=models();
header('test/ndcg@10').click();seen.ndcg_second=models();
seen.errors=window.errors;
var pre=document.createElement('pre');pre.id='probe';pre.textContent=JSON.stringify(seen);
document.body.appendChild(pre);})();</script>"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_leaderboard_html_loads_without_error_and_sorts_by_a_clicked_column(tmp_path):
    write_run(tmp_path / "runs" / "0", "pop", noisy(0.10, 2))
    write_run(tmp_path / "runs" / "1", "ease", noisy(0.30, 3))
    write_run(tmp_path / "runs" / "2", "bpr", noisy(0.20, 4))
    assert report_main([str(tmp_path / "runs"), "plots=false"]) == 0
    html = (tmp_path / "runs" / "leaderboard.html").read_text()
    assert html.count("<head>") == 1 and html.count("</body>") == 1
    page = tmp_path / "probe.html"
    page.write_text(html.replace("<head>", "<head>" + _CATCH).replace("</body>",
                                                                      _PROBE + "</body>"))
    result = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r"<pre id=\"probe\">(.*?)</pre>", result.stdout, re.DOTALL)
    assert found, f"no probe in the page (chromium exit {result.returncode}): " \
                  f"{result.stderr[-2000:]}"
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["errors"] == []
    assert seen["initial"] == ["ease", "bpr", "pop"]  # ranked by test/ndcg@10
    assert seen["model"] == ["bpr", "ease", "pop"]  # a text column: A to Z
    assert seen["ndcg_first"] == ["ease", "bpr", "pop"]  # a metric: best first
    assert seen["ndcg_second"] == ["pop", "bpr", "ease"]  # clicked again: reversed
