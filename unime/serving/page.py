"""The search page the ingress serves at ``/``: type a query or drop an image, see results."""

SEARCH_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unime search</title>
<style>
 body { font-family: sans-serif; margin: 2rem; max-width: 60rem; }
 #drop { border: 2px dashed #999; padding: 1rem; margin: .5rem 0; color: #555; }
 .hit { display: flex; gap: 1rem; align-items: center; border-bottom: 1px solid #eee; padding: .4rem 0; }
 .hit img { width: 64px; height: 64px; object-fit: contain; background: #f4f4f4; }
 .score { color: #666; font-size: .85rem; }
</style></head>
<body>
<h1>unime search</h1>
<form id="form">
  <input id="text" size="60" placeholder="query text, e.g. two red circles">
  <label><input type="checkbox" id="rerank" checked> rerank</label>
  <button type="submit">Search</button>
</form>
<div id="drop">Drop an image here to search with it</div>
<div id="status"></div>
<div id="results"></div>
<script>
let imageData = null;
const params = new URLSearchParams(window.location.search);  // ?q=...&key=... search on load
const apiKey = params.get('key');
const drop = document.getElementById('drop');
drop.addEventListener('dragover', e => e.preventDefault());
drop.addEventListener('drop', e => {
  e.preventDefault();
  const reader = new FileReader();
  reader.onload = () => { imageData = reader.result; drop.textContent = 'image ready: ' + e.dataTransfer.files[0].name; };
  reader.readAsDataURL(e.dataTransfer.files[0]);
});
// an <img src> cannot send the API key: with a key, fetch the image and show it as a blob
async function showImage(img, path, headers) {
  const url = '/images/' + encodeURIComponent(path);
  if (!apiKey) { img.src = url; return; }
  const response = await fetch(url, {headers});
  if (response.ok) img.src = URL.createObjectURL(await response.blob());
}
document.getElementById('form').addEventListener('submit', async e => {
  e.preventDefault();
  const query = {text: document.getElementById('text').value || null, image: imageData};
  const body = {query, top_k: 10, rerank: document.getElementById('rerank').checked, rerank_k: 10};
  const headers = {'Content-Type': 'application/json'};
  if (apiKey) headers['X-API-Key'] = apiKey;
  const response = await fetch('/v1/search', {method: 'POST', headers, body: JSON.stringify(body)});
  const payload = await response.json();
  const results = document.getElementById('results');
  results.innerHTML = '';
  if (!response.ok) { document.getElementById('status').textContent = (payload.error && payload.error.message) || JSON.stringify(payload); return; }
  document.getElementById('status').textContent = payload.results.length + ' results in ' +
    payload.timings_ms.total.toFixed(0) + ' ms';
  for (const hit of payload.results) {
    const row = document.createElement('div');
    row.className = 'hit';
    const thumb = hit.image ? '<img alt="">' : '';
    const rerank = hit.rerank_score === null ? '' : ' | rerank ' + hit.rerank_score.toFixed(3);
    row.innerHTML = thumb + '<div><div class="text"></div><div class="score">retrieval ' +
      hit.score.toFixed(3) + rerank + '</div></div>';
    row.querySelector('.text').textContent = hit.text || hit.id;
    if (hit.image) showImage(row.querySelector('img'), hit.image, headers);
    results.appendChild(row);
  }
});
if (params.get('q')) {
  document.getElementById('text').value = params.get('q');
  document.getElementById('form').requestSubmit();
}
</script>
</body></html>
"""
