/* Pylight explorer: the database's tables, read through the REST API and kept live
 * through one WebSocket (/ws, by pylight.js).
 *
 * Routes (location.hash):
 *   #/                        the tables and views, with row counts
 *   #/table/<name>?<query>    rows of one table; <query> is the API's own query string
 *                             (filters, or, order, limit, after), so the JSON and CSV
 *                             links show exactly what is on screen
 *
 * Nothing from the server is ever parsed as HTML: every value goes in with
 * textContent (the `h` helper below has no way to set innerHTML).
 */
(function () {
  "use strict";

  var config = document.body.dataset;
  var API = config.apiPrefix;               // "/api", or the server's [api] prefix
  var FEEDS = config.feedsPrefix;           // "/ws" prefix; "" when feeds are off
  var TOKEN_KEY = "pylight.token";          // the API docs page reads it too
  // The query language's parameters (API.md 2 and 5); anything else is a filter.
  var PARAMETERS = ["order", "limit", "offset", "select", "after", "count", "or", "and",
                    "format", "all", "token"];
  var OPERATORS = ["eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is"];
  var BUILDER = [["eq", "="], ["neq", "≠"], ["lt", "<"], ["lte", "≤"], ["gt", ">"],
                 ["gte", "≥"], ["like", "like"], ["ilike", "ilike"], ["is.null", "is null"],
                 ["not.is.null", "is not null"]];
  var NUMERIC = ["integer", "number", "decimal"];
  var main = document.getElementById("main");

  var session = {
    token: window.sessionStorage.getItem(TOKEN_KEY),
    tables: null,   // promise of {name: description} (GET /api/)
    counts: null,   // promise of {name: {rows, rows_estimated, rows_error}} (GET /api/?count=true)
    client: null,   // one Pylight.Client: one socket for every feed
    view: null,     // the TableView on screen (it owns its feed)
  };

  // -- small helpers ------------------------------------------------------------------

  /* An element with properties and children; text only ever as textContent. */
  function h(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (name) {
      var value = props[name];
      if (value === undefined || value === null || value === false) return;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.slice(0, 2) === "on") node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined || child === false) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function display(value) {
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  /* JSON.parse, except that integers past 2^53 stay exact: they become strings, shown as
   * the server sent them (a JavaScript number would show 9223372036854775807 as
   * 9223372036854776000). Strings are matched whole, so digits inside them are left alone. */
  var TOKENS = /"(?:[^"\\]|\\.)*"|(?<![\w.+-])-?\d{16,}(?![\w.])/g;

  function parseExact(text) {
    return JSON.parse(text.replace(TOKENS, function (token) {
      if (token.charAt(0) === '"' || Number.isSafeInteger(Number(token))) return token;
      return '"' + token + '"';
    }));
  }

  function failure(status, message) {
    var error = new Error(message);
    error.status = status;
    return error;
  }

  function errorBox(title, error) {
    var detail = error.status ? " (" + error.status + ")" : "";
    return h("div", {class: "error", role: "alert"},
             [h("strong", {text: title}), error.message + detail]);
  }

  /* GET a path under the API prefix: the JSON body, or a rejection with the API's message. */
  function api(path) {
    var headers = {"Accept": "application/json"};
    if (session.token) headers["Authorization"] = "Bearer " + session.token;
    return fetch(API + path, {headers: headers}).catch(function (err) {
      throw failure(0, "cannot reach the server: " + err.message);
    }).then(function (response) {
      return response.text().then(function (text) {
        var payload = null;
        try { payload = text ? parseExact(text) : null; } catch (err) { /* not JSON */ }
        if (response.ok) return payload;
        var error = payload && payload.error;
        throw failure(response.status, (error && error.message) ||
                      response.status + " " + response.statusText);
      });
    });
  }

  function tables() {
    if (!session.tables) {
      session.tables = api("/").then(function (schema) {
        var byName = {};
        schema.tables.forEach(function (table) { byName[table.name] = table; });
        return byName;
      });
      session.tables.catch(function () { session.tables = null; });  // retried next time
    }
    return session.tables;
  }

  function counts(fresh) {
    if (!session.counts || fresh) {
      session.counts = api("/?count=true").then(function (schema) {
        var byName = {};
        schema.tables.forEach(function (table) { byName[table.name] = table; });
        return byName;
      });
      session.counts.catch(function () { session.counts = null; });
    }
    return session.counts;
  }

  function client() {
    if (!session.client) {
      session.client = new Pylight.Client({apiPrefix: API, wsPrefix: FEEDS, token: session.token,
                                           parse: parseExact});
    }
    return session.client;
  }

  function setToken(token) {
    session.token = token || null;
    if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
    else window.sessionStorage.removeItem(TOKEN_KEY);
    session.tables = session.counts = null;
    // The socket authenticated with the old token: a new client opens a new one.
    // (pylight.js has no close(); with its feeds gone the old socket is not reopened.)
    var old = session.client;
    session.client = null;
    if (old && old.socket) old.socket.close();
    showSession();
  }

  function tableHash(name, params) {
    var query = params ? params.toString() : "";
    return "#/table/" + encodeURIComponent(name) + (query ? "?" + query : "");
  }

  /* An API link (JSON, CSV) for the browser to open: it cannot send the
   * Authorization header, so the token goes as ?token= (as for the socket). */
  function apiLink(table, params) {
    var copy = withoutParameter(table, params, "token");
    if (session.token) copy.append("token", session.token);
    var query = copy.toString();
    return API + "/" + encodeURIComponent(table.name) + (query ? "?" + query : "");
  }

  function operatorFirst(value) {
    var parts = value.split(".");
    if (parts[0] === "not") parts.shift();
    return parts.length > 1 && OPERATORS.indexOf(parts[0]) >= 0;
  }

  /* Whether name=value is one of the query's parameters rather than a filter: a
   * column named `order` is filtered by `order=eq.3` (API.md 5). */
  function isParameter(table, name, value) {
    if (PARAMETERS.indexOf(name) < 0) return false;
    var column = table.columns.some(function (c) { return c.name === name; });
    return !(column && operatorFirst(value));
  }

  /* A filter of the view: a column's condition, or an `or`/`and` group. */
  function isFilter(table, name, value) {
    return !isParameter(table, name, value) || name === "or" || name === "and";
  }

  /* A copy of `params` without the parameter `name` (a filter on a column of that name stays). */
  function withoutParameter(table, params, name) {
    var copy = new URLSearchParams();
    params.forEach(function (value, key) {
      if (!(key === name && isParameter(table, key, value))) copy.append(key, value);
    });
    return copy;
  }

  function navigate(hash) {
    if (location.hash === hash) route();  // the same view again: read it again
    else location.hash = hash;
  }

  function formatCount(count) {
    if (count.rows === null || count.rows === undefined) return null;
    if (!count.rows_estimated) return count.rows.toLocaleString("en-US");
    var compact = new Intl.NumberFormat("en-US", {notation: "compact", maximumFractionDigits: 1});
    return "≈ " + compact.format(count.rows);
  }

  // -- the frame: crumbs, live badge, session ---------------------------------------------

  function crumbs(items) {
    var nav = document.getElementById("crumbs");
    nav.textContent = "";
    items.forEach(function (item) {
      nav.appendChild(h("span", {}, [item.href ? h("a", {href: item.href, text: item.text})
                                                : item.text]));
    });
    document.title = items.map(function (item) { return item.text; }).concat("Pylight").join(" · ");
  }

  function setLive(state, title) {
    var badge = document.getElementById("live");
    badge.hidden = !state;
    if (!state) return;
    var words = {open: "live", connecting: "connecting…", closed: "not live", off: "not live",
                 error: "live updates stopped"};
    badge.textContent = words[state] || state;
    badge.className = "badge " + state;
    badge.title = title || "";
  }

  function showSession() {
    var holder = document.getElementById("session");
    holder.textContent = "";
    if (!session.token) return;
    holder.appendChild(h("button", {class: "link", type: "button", text: "forget token",
                                    title: "The token is kept in this tab only (sessionStorage)",
                                    onclick: function () { setToken(null); route(); }}));
  }

  /* The token field. With an auth plugin, GET /api/ lists only what the caller may
   * read (nothing, for an anonymous caller) and a refused token is a 401. */
  function tokenForm(title, message) {
    var input = h("input", {type: "password", id: "token", autocomplete: "off",
                            placeholder: "API key or JWT", "aria-label": "Token"});
    var form = h("form", {onsubmit: function (event) {
      event.preventDefault();
      if (!input.value.trim()) return;
      setToken(input.value.trim());
      route();
    }}, [input, h("button", {class: "primary", type: "submit", text: "Use token"})]);
    return h("section", {class: "token"}, [
      h(title ? "h1" : "h2", {text: title || "Does this server need a token?"}),
      h("p", {class: "note", text: message}),
      h("p", {text: "It is kept in this browser tab only, and sent as Authorization: Bearer " +
                    "(and as ?token= on the live socket and on JSON and CSV links)."}),
      form]);
  }

  function showToken(message) {
    setLive(null);
    crumbs([{text: "Token"}]);
    main.textContent = "";
    main.appendChild(tokenForm("A token is needed", message));
    document.getElementById("token").focus();
  }

  /* A failure of a whole page: a token form for 401, else the error where the page was. */
  function showFailure(title) {
    return function (error) {
      if (error.status === 401) {
        showToken(session.token ? "The token was refused: " + error.message : error.message);
        return;
      }
      main.textContent = "";
      main.appendChild(errorBox(title, error));
    };
  }

  // -- the table list ---------------------------------------------------------------------

  function showTables() {
    setLive(null);
    crumbs([{text: "Tables"}]);
    main.textContent = "";
    main.appendChild(h("p", {class: "note", text: "Reading the tables…"}));
    tables().then(renderTables, showFailure("Cannot read the tables"));
  }

  function renderTables(byName) {
    var names = Object.keys(byName);
    var cells = {};   // name -> the <td> of its row count
    var body = h("tbody", {id: "tables"});
    names.forEach(function (name) {
      var table = byName[name];
      var kind = [table.view ? "view" : "table"];
      if (table.read_only && !table.view) kind.push("read-only");
      if (table.ws) kind.push("live");
      cells[name] = h("td", {class: "num", dataset: {rowsOf: name}}, [h("span", {class: "null", text: "…"})]);
      body.appendChild(h("tr", {dataset: {table: name}}, [
        h("td", {}, [h("a", {href: tableHash(name), text: name})]),
        cells[name],
        h("td", {text: kind.join(", ")}),
        h("td", {text: table.primary_key.join(", ")}, table.primary_key.length ? [] :
          [h("span", {class: "null", text: "none"})]),
        h("td", {class: "num", text: String(table.columns.length)}),
      ]));
    });
    var search = h("input", {type: "search", placeholder: "Find a table", "aria-label": "Find a table",
                             oninput: function () {
      var wanted = search.value.toLowerCase();
      Array.prototype.forEach.call(body.rows, function (row) {
        row.hidden = row.dataset.table.toLowerCase().indexOf(wanted) < 0;
      });
    }});
    var problem = h("div");
    main.textContent = "";
    main.appendChild(h("h1", {text: "Tables"}));
    if (!names.length) {
      main.appendChild(h("p", {text: "There are no tables or views you may read."}));
      if (!session.token) {
        main.appendChild(tokenForm(null, "With an auth plugin, a caller without a token sees " +
                                         "no tables."));
      }
      return;
    }
    main.appendChild(h("p", {class: "sub"}, [
      names.length + (names.length === 1 ? " table or view" : " tables and views"),
      h("span", {class: "note", text: "row counts are exact; ≈ marks the database's estimate " +
                                      "for large tables"})]));
    if (names.length > 8) main.appendChild(h("div", {class: "tools"}, [search]));
    main.appendChild(problem);
    main.appendChild(h("div", {class: "grid-wrap"}, [h("table", {class: "grid"}, [
      h("thead", {}, [h("tr", {}, ["Name", "Rows", "Kind", "Key", "Columns"].map(function (text) {
        return h("th", {text: text});
      }))]), body])]));
    counts(true).then(function (byCount) {
      names.forEach(function (name) { showCount(cells[name], byCount[name] || {}); });
    }, function (error) {
      problem.appendChild(errorBox("Row counts are unavailable", error));
      names.forEach(function (name) { cells[name].textContent = "?"; });
    });
  }

  function showCount(cell, count) {
    cell.textContent = "";
    var text = formatCount(count);
    if (text !== null) {
      cell.textContent = text;
      if (count.rows_estimated) cell.title = "estimated by the database's statistics";
    } else if (count.rows_error) {
      cell.appendChild(h("span", {class: "count-error", text: "cannot count: " + count.rows_error}));
    } else {
      cell.appendChild(h("span", {class: "null", text: "—",
                                  title: "not counted (views, and large tables you see part of)"}));
    }
  }

  // -- one table ----------------------------------------------------------------------------

  function showTable(name, query) {
    crumbs([{text: "Tables", href: "#/"}, {text: name}]);
    main.textContent = "";
    main.appendChild(h("p", {class: "note", text: "Reading " + name + "…"}));
    tables().then(function (byName) {
      var table = byName[name];
      if (!table) {
        setLive(null);
        main.textContent = "";
        main.appendChild(errorBox("No table named " + JSON.stringify(name),
                                  failure(404, "it is not among the tables you may read")));
        main.appendChild(h("a", {href: "#/", text: "← all tables"}));
        return;
      }
      session.view = new TableView(table, byName, query);
      session.view.start();
    }, showFailure("Cannot read the tables"));
  }

  function TableView(table, byName, query) {
    this.table = table;
    this.byName = byName;
    this.params = new URLSearchParams(query);
    this.rows = new Map();     // row key -> <tr>
    this.columns = table.columns.map(function (c) { return c.name; });
    this.kinds = {};
    table.columns.forEach(function (c) { this.kinds[c.name] = c.type; }, this);
    this.pending = null;       // changes that arrived while a page was being read
    this.loads = 0;            // the latest read wins
    this.next = null;          // the API's link to the next page
    this.total = null;         // how many rows the filters match, where it was counted
    this.tableCount = null;    // the table's row count from the table list
    this.feed = null;
    this.fallback = null;      // a timer: read the rows even if the feed is slow to answer
    this.closed = false;
  }

  TableView.prototype.close = function () {
    this.closed = true;
    clearTimeout(this.fallback);
    if (this.feed) this.feed.close();
  };

  /* The query's filters, as [name, value] pairs: what the chips show and the feed filters by. */
  TableView.prototype.filters = function () {
    var table = this.table;
    var out = [];
    this.params.forEach(function (value, name) {
      if (isFilter(table, name, value)) out.push([name, value]);
    });
    return out;
  };

  TableView.prototype.param = function (name) {
    var table = this.table;
    var found = null;
    this.params.forEach(function (value, key) {
      if (key === name && isParameter(table, key, value)) found = value;
    });
    return found;
  };

  /* The view's query without its page cursor: a changed view starts at its first page. */
  TableView.prototype.firstPage = function () {
    return withoutParameter(this.table, withoutParameter(this.table, this.params, "after"), "offset");
  };

  TableView.prototype.go = function (params) {
    navigate(tableHash(this.table.name, params));
  };

  TableView.prototype.start = function () {
    var self = this;
    this.render();
    this.pending = [];
    if (!this.table.ws || !FEEDS) {
      setLive("off", this.table.view ? "a view has no feed of its changes"
                                     : "the server's feeds are off");
      this.load();
      return;
    }
    // Subscribe first and read once subscribed, so no change falls between the read and
    // the feed; a feed slow to answer does not hold the rows back (they are read again
    // when it does).
    this.fallback = setTimeout(function () { self.load(); }, 1500);
    var subscribed = false;
    var filter = new URLSearchParams(this.filters());
    var select = this.param("select");
    if (select !== null) filter.append("select", select);
    this.feed = client().subscribe(this.table.name, {
      filter: filter.toString(),
      onStatus: function (status) { if (!self.closed) setLive(status); },
      onHello: function () {
        clearTimeout(self.fallback);
        if (!subscribed) self.load();
        subscribed = true;
      },
      onChange: function (msg) { self.apply(msg); },
      onResync: function () { self.load(); },
      onError: function (error) {
        clearTimeout(self.fallback);
        if (self.closed) return;
        setLive("error", error.message);
        self.notice.textContent = "Live updates stopped: " + (error.message || "refused") + ".";
        if (!subscribed) self.load();
      },
    });
  };

  TableView.prototype.render = function () {
    var self = this;
    var table = this.table;
    this.summary = h("span", {id: "summary"});
    this.notice = h("span", {class: "note", id: "notice"});
    this.head = h("thead");
    this.body = h("tbody", {id: "rows-" + table.name});
    this.pager = h("div", {class: "pager"});
    this.pageNote = h("span", {class: "note", id: "page-note"});
    this.place = h("div", {id: "place"});   // errors of this view appear here
    var kind = table.view ? "view" : table.read_only ? "read-only table" : "table";
    main.textContent = "";
    main.appendChild(h("h1", {text: table.name}));
    main.appendChild(h("p", {class: "sub"}, [
      h("span", {text: kind}), this.summary,
      h("a", {href: apiLink(table, this.params), id: "json-link", target: "_blank",
              rel: "noopener", text: "JSON"}),
      h("a", {href: apiLink(table, withCsv(table, this.params)), id: "csv-link", target: "_blank",
              rel: "noopener", text: "CSV"}),
      this.notice]));
    main.appendChild(this.filterPanel());
    main.appendChild(this.place);
    this.gridBox = h("div", {class: "grid-wrap"}, [h("table", {class: "grid", id: "grid"},
                                                        [this.head, this.body])]);
    main.appendChild(this.gridBox);
    main.appendChild(this.pager);
    this.renderHead();
    counts().then(function (byCount) {
      self.tableCount = byCount[table.name] || null;
      self.showSummary();
    }, function () { /* the count is a nicety: the rows are what matter here */ });
  };

  function withCsv(table, params) {
    var copy = withoutParameter(table, params, "format");
    copy.append("format", "csv");  // a filter on a column named "format" stays
    return copy;
  }

  TableView.prototype.filterPanel = function () {
    var self = this;
    var column = h("select", {id: "filter-column", "aria-label": "Column"},
                   this.columns.map(function (name) { return h("option", {value: name, text: name}); }));
    var operator = h("select", {id: "filter-operator", "aria-label": "Operator"},
                     BUILDER.map(function (op) { return h("option", {value: op[0], text: op[1]}); }));
    var value = h("input", {id: "filter-value", class: "value", placeholder: "value",
                            "aria-label": "Value"});
    operator.addEventListener("change", function () {
      value.disabled = operator.value.indexOf("is.") >= 0;
      value.placeholder = /like$/.test(operator.value) ? "value, * is a wildcard" : "value";
    });
    var builder = h("form", {class: "builder", onsubmit: function (event) {
      event.preventDefault();
      var op = operator.value;
      var params = self.firstPage();
      params.append(column.value, op.indexOf("is.") >= 0 ? op : op + "." + value.value);
      self.go(params);
    }}, [column, operator, value, h("button", {type: "submit", text: "Add filter"})]);

    var raw = h("input", {class: "query", id: "query", value: readable(this.firstPage()),
                          spellcheck: "false",
                          placeholder: "filters and order, e.g. " + this.columns[0] + "=gt.10&order=" +
                                       this.columns[0] + ".desc",
                          "aria-label": "Query string"});
    var rawForm = h("form", {class: "raw", onsubmit: function (event) {
      event.preventDefault();
      self.go(new URLSearchParams(raw.value.trim().replace(/^\?/, "")));
    }}, [raw, h("button", {type: "submit", class: "primary", text: "Apply"})]);

    var chips = this.filters().map(function (pair, index) {
      return h("span", {class: "chip"}, [h("code", {text: pair[0] + "=" + pair[1]}),
        h("button", {type: "button", title: "Remove this filter", "aria-label": "Remove filter",
                     text: "×", onclick: function () { self.go(self.without(index)); }})]);
    });
    return h("section", {class: "filters", "aria-label": "Filters"}, [
      builder,
      chips.length ? h("div", {class: "chips", id: "chips"}, chips) : null,
      rawForm]);
  };

  /* The view's query at its first page, without its `index`th filter. */
  TableView.prototype.without = function (index) {
    var table = this.table;
    var seen = -1;
    var params = new URLSearchParams();
    this.firstPage().forEach(function (value, name) {
      if (isFilter(table, name, value) && ++seen === index) return;
      params.append(name, value);
    });
    return params;
  };

  /* A query string as a person writes it: only what would change its meaning is escaped. */
  function readable(params) {
    var parts = [];
    params.forEach(function (value, name) {
      parts.push(escapeQuery(name) + "=" + escapeQuery(value));
    });
    return parts.join("&");
  }

  function escapeQuery(text) {
    return text.replace(/[%&+#=\s]/g, function (c) { return encodeURIComponent(c); });
  }

  TableView.prototype.renderHead = function () {
    var self = this;
    var order = (this.param("order") || "").split(",")[0].split(".");
    var sorted = order[0], descending = order.indexOf("desc") > 0;
    var row = h("tr");
    this.columns.forEach(function (name) {
      var arrow = name === sorted ? (descending ? "▼" : "▲") : "";
      var key = self.table.primary_key.indexOf(name) >= 0;
      var kind = self.kinds[name] ? " (" + self.kinds[name] + ")" : "";
      var button = h("button", {type: "button", title: "Sort by " + name + kind, onclick: function () {
        var params = withoutParameter(self.table, self.firstPage(), "order");
        params.append("order", name + "." + (name === sorted && !descending ? "desc" : "asc"));
        self.go(params);
      }}, [name, h("span", {class: "arrow", text: arrow})]);
      row.appendChild(h("th", {scope: "col", dataset: {column: name},
                               class: NUMERIC.indexOf(self.kinds[name]) >= 0 ? "num" : null,
                               "aria-sort": arrow ? (descending ? "descending" : "ascending") : null},
                        [button, key ? h("span", {class: "key", text: "key"}) : null]));
    });
    this.head.textContent = "";
    this.head.appendChild(row);
  };

  TableView.prototype.load = function () {
    var self = this;
    var ticket = ++this.loads;
    this.pending = this.pending || [];
    var params = new URLSearchParams(this.params);
    var count = this.tableCount;
    // An exact total of what the filters match, where counting the table is cheap.
    if (this.param("count") === null && count && count.rows !== null && !count.rows_estimated) {
      params.append("count", "true");  // a filter on a column named "count" stays
    }
    var query = params.toString();
    return api("/" + encodeURIComponent(this.table.name) + (query ? "?" + query : ""))
      .then(function (page) {
        if (self.closed || ticket !== self.loads) return;
        self.fill(page);
        var queued = self.pending;
        self.pending = null;
        queued.forEach(function (msg) { self.apply(msg); });
        document.body.dataset.loaded = Number(document.body.dataset.loaded || 0) + 1;
      }, function (error) {
        if (self.closed || ticket !== self.loads) return;
        self.pending = null;
        if (error.status === 401) return showFailure("")(error);
        self.place.textContent = "";
        self.place.appendChild(errorBox("Cannot read " + self.table.name, error));
        self.gridBox.hidden = true;
        self.pager.textContent = "";
      });
  };

  TableView.prototype.fill = function (page) {
    var self = this;
    this.place.textContent = "";
    this.gridBox.hidden = false;
    this.next = page.next;
    this.total = typeof page.total === "number" ? page.total : null;
    if (this.param("select") !== null && page.items.length) {
      this.columns = Object.keys(page.items[0]);  // as selected (embeds included)
      this.renderHead();
    }
    this.body.textContent = "";
    this.rows.clear();
    page.items.forEach(function (record) { self.placeRow(self.renderRow(record), record, "end"); });
    this.showEmpty();
    this.renderPager();
    this.showSummary();
  };

  TableView.prototype.showEmpty = function () {
    var empty = this.body.querySelector("td.empty");
    if (this.rows.size && empty) empty.parentNode.remove();
    if (!this.rows.size && !empty) {
      this.body.appendChild(h("tr", {}, [h("td", {class: "empty", colspan: String(this.columns.length),
                                                  text: "No rows match."})]));
    }
  };

  TableView.prototype.showSummary = function () {
    var shown = this.rows.size;
    this.pageNote.textContent = shown + (shown === 1 ? " row" : " rows") + " on this page";
    var text = "";
    if (this.total !== null) {
      text = this.total.toLocaleString("en-US") + (this.total === 1 ? " row" : " rows");
      if (this.filters().length) text += this.total === 1 ? " matches" : " match";
    } else if (this.tableCount && formatCount(this.tableCount) !== null) {
      text = formatCount(this.tableCount) + " rows in the table";
    }
    this.summary.textContent = text;
  };

  TableView.prototype.renderPager = function () {
    this.pager.textContent = "";
    if (!this.atFirstPage()) {
      this.pager.appendChild(h("a", {class: "button", id: "first-page", text: "« First page",
                                     href: tableHash(this.table.name, this.firstPage())}));
    }
    if (this.next) {
      var query = new URLSearchParams(this.next.split("?")[1] || "");
      // count=true was added by load(), not asked for by the user
      if (this.param("count") === null) query = withoutParameter(this.table, query, "count");
      this.pager.appendChild(h("a", {class: "button", id: "next-page", text: "Next page »",
                                     href: tableHash(this.table.name, query)}));
    }
    this.pager.appendChild(this.pageNote);
  };

  TableView.prototype.atFirstPage = function () {
    return this.param("after") === null && this.param("offset") === null;
  };

  // -- rows ---------------------------------------------------------------------------------

  TableView.prototype.keyOf = function (record) {
    var names = this.table.primary_key.length ? this.table.primary_key : this.columns;
    return JSON.stringify(names.map(function (name) { return record[name]; }));
  };

  /* Links from this record's foreign-key values to the rows they refer to. */
  TableView.prototype.links = function (record) {
    var byName = this.byName;
    var out = {};
    (this.table.foreign_keys || []).forEach(function (fk) {
      var target = byName[fk.references.table];
      if (!target) return;  // not exposed, or not readable
      var params = new URLSearchParams();
      for (var i = 0; i < fk.columns.length; i++) {
        var value = record[fk.columns[i]];
        if (value === null || value === undefined) return;
        params.append(fk.references.columns[i], "eq." + display(value));
      }
      var link = {href: tableHash(target.name, params),
                  title: target.name + " where " + readable(params)};
      fk.columns.forEach(function (name) { if (!out[name]) out[name] = link; });
    });
    return out;
  };

  TableView.prototype.renderRow = function (record) {
    var self = this;
    var links = this.links(record);
    var row = h("tr", {dataset: {key: this.keyOf(record)}});
    // The key as the API writes it in a row's path (/api/<table>/<pk>).
    var key = this.table.primary_key;
    if (key.length) row.dataset.pk = key.map(function (name) { return display(record[name]); }).join(",");
    this.columns.forEach(function (name) {
      var value = record[name];
      var cell = h("td", {class: NUMERIC.indexOf(self.kinds[name]) >= 0 ? "num" : null});
      if (value === null) {
        cell.appendChild(h("span", {class: "null", text: "null"}));
      } else if (value !== undefined) {
        var text = display(value);
        if (text.length > 40) cell.title = text;
        if (links[name]) cell.appendChild(h("a", {href: links[name].href, title: links[name].title,
                                                  class: "fk", text: text}));
        else cell.textContent = text;
      }
      row.appendChild(cell);
    });
    return row;
  };

  TableView.prototype.placeRow = function (row, record, where) {
    var key = this.keyOf(record);
    if (where === "start") this.body.insertBefore(row, this.body.firstChild);
    else this.body.appendChild(row);
    this.rows.set(key, row);
  };

  function flash(row, kind) {
    row.classList.remove("flash");
    void row.offsetWidth;  // restart the animation
    row.classList.add("flash");
    if (kind) row.classList.add(kind);
  }

  /* One change of the feed (API.md 3 and 6.1) applied to the rows on screen. */
  TableView.prototype.apply = function (msg) {
    if (this.pending) {          // a page is being read: applied on top of it
      this.pending.push(msg);
      return;
    }
    var record = msg.record || {};
    var key = this.keyOf(record);
    if (msg.event === "deleted" || msg.matches === false) {
      this.leave(key);
      if (this.total !== null) this.total -= 1;
    } else {
      // The row on screen: by its key, or by its old values (a key that changed, or
      // a table without a key).
      var held = this.rows.has(key) ? key : null;
      if (held === null && msg.old && this.rows.has(this.keyOf(msg.old))) held = this.keyOf(msg.old);
      if (held !== null) {
        var old = this.rows.get(held);
        var row = this.renderRow(record);
        old.replaceWith(row);
        this.rows.delete(held);
        this.rows.set(key, row);
        flash(row, null);
      } else if (msg.event === "created" || this.wholeResult()) {
        // A new row is shown at the top, whatever page this is; a row that came into
        // the filters only where every matching row is on screen.
        var fresh = this.renderRow(record);
        this.placeRow(fresh, record, "start");
        flash(fresh, msg.event === "created" ? "created" : null);
        if (this.total !== null) this.total += 1;
      }
    }
    this.showEmpty();
    this.showSummary();
  };

  TableView.prototype.wholeResult = function () {
    return !this.next && this.atFirstPage();
  };

  TableView.prototype.leave = function (key) {
    var row = this.rows.get(key);
    if (!row) return;
    this.rows.delete(key);
    row.classList.add("leaving");
    setTimeout(function () { row.remove(); }, 900);
  };

  // -- routing --------------------------------------------------------------------------------

  function route() {
    if (session.view) session.view.close();
    session.view = null;
    var hash = location.hash.replace(/^#/, "");
    var match = /^\/table\/([^?]*)(?:\?(.*))?$/.exec(hash);
    if (!match) {
      showTables();
      return;
    }
    var name;
    try {
      name = decodeURIComponent(match[1]);
    } catch (err) {
      showFailure("Cannot read this address")(failure(400, "the table name is not valid UTF-8"));
      return;
    }
    showTable(name, match[2] || "");
  }

  window.addEventListener("hashchange", route);
  showSession();
  route();
})();
