(function () {
  'use strict';
  // Every value from the gateway is inserted with textContent: client ids
  // are chosen by clients and must never become markup.
  var body = document.body;
  var refresh = parseInt(body.getAttribute('data-refresh'), 10) || 2000;
  var url = location.pathname + '?format=json';
  var updates = 0;

  function $(id) { return document.getElementById(id); }
  function set(id, text) { $(id).textContent = text; }
  function cell(text, cls) {
    var td = document.createElement('td');
    td.textContent = text === undefined || text === null ? '' : String(text);
    if (cls) { td.className = cls; }
    return td;
  }
  // fill replaces a table body's rows; each row is a list of [text, class].
  function fill(id, rows, empty, cols) {
    var tb = $(id);
    var out = [];
    if (rows.length === 0) {
      var tr = document.createElement('tr');
      var td = cell(empty, 'empty');
      td.colSpan = cols;
      tr.appendChild(td);
      out.push(tr);
    }
    rows.forEach(function (r) {
      var tr = document.createElement('tr');
      r.forEach(function (c) { tr.appendChild(Array.isArray(c) ? cell(c[0], c[1]) : cell(c)); });
      out.push(tr);
    });
    tb.replaceChildren.apply(tb, out);
  }
  function never(s) { return !s || s.indexOf('0001-01-01') === 0; }
  function when(s) {
    if (never(s)) { return '–'; }
    return new Date(s).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z').replace('Z', ' UTC');
  }
  function span(sec) {
    sec = Math.max(0, Math.round(sec));
    var d = Math.floor(sec / 86400), h = Math.floor(sec % 86400 / 3600), m = Math.floor(sec % 3600 / 60), s = sec % 60;
    if (d > 0) { return d + 'd ' + h + 'h ' + m + 'm'; }
    if (h > 0) { return h + 'h ' + m + 'm ' + s + 's'; }
    if (m > 0) { return m + 'm ' + s + 's'; }
    return s + 's';
  }
  function ago(now, s) {
    if (never(s)) { return '–'; }
    return when(s) + ' (' + span((new Date(now) - new Date(s)) / 1000) + ' ago)';
  }
  function n(v) { return (v || 0).toLocaleString('en-US'); }

  function renderWindow(d) {
    var w = d.window;
    $('no-rotation').hidden = !!w;
    $('window').hidden = !w;
    if (!w) { return; }
    var phase = $('window-phase');
    phase.textContent = w.open ? 'open' : 'closed (' + w.phase + ')';
    phase.className = w.open ? 'phase-open' : 'phase-closed';
    set('window-start', when(w.start));
    set('window-end', when(w.end));
    set('window-grace', when(w.grace_ends));
    set('window-left', w.next_phase ? span(w.seconds_left) + ' until ' + w.next_phase : 'over');
  }

  function render(d) {
    var st = d.rotation;
    var c = st.counts || {};
    renderWindow(d);
    var pct = st.confirmed_percent || 0;
    set('confirmed-percent', pct.toFixed(1) + ' %');
    $('confirmed-bar').value = pct;
    set('confirmed-count', n(c.confirmed));
    set('tracked-count', n(c.tracked));
    fill('state-rows', st.counts ? [
      ['unseen', [n(c.unseen), 'num']], ['pending', [n(c.pending), 'num']],
      ['anchor fetched', [n(c.anchor_fetched), 'num']], ['confirmed', [n(c.confirmed), 'num']],
      ['tracked', [n(c.tracked) + ' of ' + n(c.max_clients), 'num']], ['on plain HTTP', [n(c.plaintext), 'num']],
      ['evicted', [n(c.evicted), 'num']], ['refused (table full)', [n(c.refused), 'num']]
    ] : [], 'no rotation: clients are tracked during a rotation window', 2);

    set('plaintext-count', st.plaintext_clients === null || st.plaintext_clients === undefined ? 'not tracked' : n(st.plaintext_clients));
    var strag = (st.stragglers && st.stragglers.clients) || [];
    var plain = [], kept = {};
    (st.needs_agent_upgrade || []).forEach(function (k) {
      kept[k.client] = true;
      plain.push([[k.client, 'client'], k.seen ? k.progress : 'not seen', k.seen ? ago(st.now, k.last_seen) : '–', ['needs agent upgrade', 'upgrade']]);
    });
    strag.forEach(function (s) {
      if (s.seen_plaintext && !kept[s.client]) { plain.push([[s.client, 'client'], s.progress, ago(st.now, s.last_seen), 'straggler on plain HTTP']); }
    });
    fill('plaintext-rows', plain, 'none listed (kept clients and stragglers on plain HTTP are listed here)', 4);

    var total = st.stragglers ? st.stragglers.total : 0;
    set('stragglers-total', st.stragglers ? '(' + n(total) + ' unconfirmed, longest silent first' + (total > strag.length ? '; first ' + strag.length + ' shown' : '') + ')' : '');
    fill('straggler-rows', strag.map(function (s) {
      return [[s.client, 'client'], s.progress, ago(st.now, s.last_seen), [when(s.anchor_fetched), 'nowrap'], [n(s.heartbeats_since), 'num'], s.seen_plaintext ? 'yes' : 'no'];
    }), st.stragglers ? 'no stragglers: every tracked client confirmed' : 'no rotation', 6);

    fill('limit-rows', d.heartbeat_limit.map(function (m) {
      return [m.labels.outcome, m.labels.reason, [n(m.value), 'num']];
    }), 'no heartbeat_limit requests counted', 3);
    var conns = d.upstream.connections || {};
    fill('pool-rows', Object.keys(conns).sort().map(function (k) { return [k, [n(conns[k]), 'num']]; }), 'no legacy_tls transport', 2);
    fill('handshake-rows', d.upstream.handshakes.map(function (m) {
      return [m.labels.result, m.labels.tls_version, [n(m.value), 'num']];
    }), 'none yet', 3);
    fill('retry-rows', d.upstream.retries.map(function (m) { return [m.labels.reason, [n(m.value), 'num']]; }), 'none', 2);
    fill('key-rows', (st.signing_keys || []).map(function (k) {
      return [k.role, [k.key_id, 'client'], k.subject, [when(k.not_after), 'nowrap'], [k.pin, 'client']];
    }), 'none reported', 5);
  }

  function poll() {
    fetch(url, { cache: 'no-store', credentials: 'same-origin' }).then(function (r) {
      if (!r.ok) { throw new Error('HTTP ' + r.status); }
      return r.json();
    }).then(function (d) {
      render(d);
      updates++;
      body.setAttribute('data-updates', String(updates));
      $('status').className = '';
      set('status', 'updated ' + when(d.now) + ', every ' + (refresh < 1000 ? refresh + ' ms' : span(refresh / 1000)));
    }).catch(function (e) {
      $('status').className = 'failed';
      set('status', 'update failed: ' + e.message + '; retrying');
    }).then(function () { setTimeout(poll, refresh); });
  }
  poll();
}());
