/* Pylight browser client: live table feeds and windows over one WebSocket, with
 * reconnect and `since` resume.
 *
 *   const client = new Pylight.Client();            // same origin as the page
 *   const feed = client.subscribe("products", {
 *     filter: "price=gt.10",                         // optional, REST query language;
 *                                                    // with order and limit: a live window
 *     onChange(msg) {},                              // every change message
 *     onWindow(msg) {},                              // live window messages (snapshot, enter...)
 *     onResync(msg) {},                              // re-read over REST: changes were missed
 *     onStatus(status) {},                           // "connecting" | "open" | "closed"
 *     onError(error) {},                             // refused for good: {status, code, message}
 *   });
 *   feed.close();
 *
 * No dependencies. All subscriptions of a client share one socket to /ws. A
 * dropped connection is retried with exponential backoff and each subscription
 * resumed with its own `since` (the last seq it saw), so no change is lost while
 * the server's replay buffer covers the gap; otherwise the server sends resync.
 *
 * Failures that retrying cannot mend are not retried: a refused subscription
 * (unknown table 404, bad filter 400, no permission 401/403) ends that feed; a
 * refused connection (a bad or expired token 401, this page's origin not in
 * [realtime] allowed_origins 403, no feeds at that address 404) ends every feed.
 * Each ended feed gets onError(error) and the status "closed"; the client's own
 * onError (new Pylight.Client({onError})) hears of a refused connection once.
 * A browser does not show a script why a WebSocket failed, so after a socket
 * that never opened the client asks the same URL over plain HTTP.
 */
(function (root) {
  "use strict";

  function Feed(client, table, options, id) {
    this.client = client;
    this.table = table;
    this.options = options || {};
    this.id = id;
    this.seq = null;          // last seq seen, for resume
    this.closed = false;
    this.state = null;
  }

  Feed.prototype.status = function (value) {
    if (this.state === value) return;
    this.state = value;
    if (this.options.onStatus) this.options.onStatus(value, this);
  };

  Feed.prototype.request = function () {
    var message = {type: "subscribe", id: this.id, table: this.table,
                   filter: this.options.filter || ""};
    if (this.seq !== null) message.since = this.seq;
    return message;
  };

  Feed.prototype.receive = function (msg) {
    var options = this.options;
    if (msg.type === "subscribed") {
      this.status("open");
      if (this.seq === null) this.seq = msg.seq;
      if (options.onHello) options.onHello(msg, this);
    } else if (msg.type === "resync") {
      this.seq = msg.seq;
      if (options.onResync) options.onResync(msg, this);
    } else if (msg.type === "change") {
      if (typeof msg.seq === "number") this.seq = msg.seq;
      if (options.onChange) options.onChange(msg, this);
    } else if (msg.type === "window") {
      if (options.onWindow) options.onWindow(msg, this);
    } else if (msg.type === "error") {
      // A refused subscription (unknown table, bad filter, no permission) will be
      // refused again: it stops rather than retrying.
      this.closed = true;
      this.client.forget(this);
      this.status("closed");
      if (options.onError) options.onError(msg.error || msg, this);
    }
  };

  Feed.prototype.close = function () {
    if (this.closed) return;
    this.closed = true;
    this.client.forget(this);
    this.client.send({type: "unsubscribe", id: this.id});
    this.status("closed");
  };

  function Client(options) {
    options = options || {};
    var origin = options.url || (root.location ? root.location.origin : "http://127.0.0.1:8000");
    this.apiBase = origin + (options.apiPrefix || "/api");
    this.wsUrl = origin.replace(/^http/, "ws") + (options.wsPrefix || "/ws");
    this.probeUrl = origin + (options.wsPrefix || "/ws");   // the same route over HTTP
    this.onError = options.onError || null;
    this.parse = options.parse || JSON.parse;   // e.g. one that keeps integers past 2^53 exact
    this.token = options.token || null;
    this.minDelay = options.minDelay || 500;
    this.maxDelay = options.maxDelay || 10000;
    this.feeds = {};
    this.count = 0;
    this.attempt = 0;
    this.socket = null;
    this.open = false;
    this.pingTimer = null;
    this.retryTimer = null;
    this.lastHeard = 0;
  }

  Client.prototype.subscribe = function (table, options) {
    this.count += 1;
    var feed = new Feed(this, table, options, "f" + this.count);
    this.feeds[feed.id] = feed;
    feed.status("connecting");
    if (this.open) this.send(feed.request());
    else this.connect();
    return feed;
  };

  Client.prototype.forget = function (feed) {
    delete this.feeds[feed.id];
  };

  Client.prototype.send = function (message) {
    if (!this.open) return;
    try { this.socket.send(JSON.stringify(message)); } catch (err) { /* closing */ }
  };

  Client.prototype.connect = function () {
    var self = this;
    if (this.socket || this.retryTimer) return;
    var query = this.token ? "?token=" + encodeURIComponent(this.token) : "";
    var socket, opened = false;
    try {
      socket = new WebSocket(this.wsUrl + query);
    } catch (err) {
      // A malformed URL, or ws:// from an https page: no retry can mend it.
      this.fail({status: 0, code: "bad_url", message: String(err && err.message || err)});
      return;
    }
    this.socket = socket;
    socket.onopen = function () {
      opened = true;
      self.attempt = 0;
      self.open = true;
      self.lastHeard = Date.now();
      Object.keys(self.feeds).forEach(function (id) { self.send(self.feeds[id].request()); });
    };
    socket.onmessage = function (event) {
      var msg;
      try { msg = self.parse(event.data); } catch (err) { return; }
      self.lastHeard = Date.now();
      if (msg.type === "hello") {
        self.startPings(msg.heartbeat || 20);
      } else if (msg.sub !== undefined && self.feeds[msg.sub]) {
        self.feeds[msg.sub].receive(msg);
      }
    };
    socket.onclose = function (event) {
      self.stopPings();
      self.socket = null;
      self.open = false;
      var waiting = Object.keys(self.feeds);
      waiting.forEach(function (id) { self.feeds[id].status("connecting"); });
      if (!waiting.length) return;
      if (event.code === 4401) {   // the token expired: the same token is refused again
        self.fail({status: 401, code: "unauthorized", message: event.reason || "token expired"});
      } else if (!opened) {
        self.probe(query);
      } else {
        self.scheduleRetry();
      }
    };
    socket.onerror = function () { /* onclose follows */ };
  };

  // Why did the upgrade fail? The route answers a plain GET with the same checks
  // (the token) and a JSON error that a page may read when its origin may connect.
  // A page whose origin is refused cannot read the answer at all, while an opaque
  // ("no-cors") request still reaches the server: that tells it from a server
  // that is down, which is retried.
  Client.prototype.probe = function (query) {
    var self = this;
    if (typeof fetch !== "function") { this.scheduleRetry(); return; }
    var permanent = {401: true, 403: true, 404: true};
    fetch(this.probeUrl + query, {headers: {"Accept": "application/json"}}).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (body) {
        if (permanent[response.status]) {
          self.fail((body && body.error) || {status: response.status, message: response.statusText});
        } else {
          self.scheduleRetry();   // 400 (it would upgrade now), 503 (a limit): try again
        }
      });
    }, function () {
      return fetch(self.probeUrl, {mode: "no-cors"}).then(function () {
        var origin = root.location ? root.location.origin : "this page";
        self.fail({status: 403, code: "forbidden",
                   message: "the server refuses WebSockets from pages at " + origin +
                            "; add it to [realtime] allowed_origins",
                   details: {origin: origin, setting: "[realtime] allowed_origins"}});
      }, function () { self.scheduleRetry(); });
    });
  };

  // A failure no retry mends: every feed ends with onError, nothing is retried.
  Client.prototype.fail = function (error) {
    var self = this;
    var feeds = Object.keys(this.feeds).map(function (id) { return self.feeds[id]; });
    feeds.forEach(function (feed) { feed.receive({type: "error", error: error}); });
    if (this.onError) this.onError(error, this);
  };

  Client.prototype.scheduleRetry = function () {
    var self = this;
    if (this.retryTimer) return;
    var base = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this.attempt));
    var delay = base / 2 + Math.random() * base / 2;   // jitter: clients don't reconnect in step
    this.attempt += 1;
    this.retryTimer = setTimeout(function () {
      self.retryTimer = null;
      if (Object.keys(self.feeds).length) self.connect();
    }, delay);
  };

  // Browsers cannot send ping frames: send {"type":"ping"} and expect any
  // message back; silence past three half-intervals means the link is dead.
  Client.prototype.startPings = function (heartbeat) {
    var self = this;
    this.stopPings();
    var interval = Math.max(1000, heartbeat * 1000 / 2);
    this.pingTimer = setInterval(function () {
      if (!self.socket || self.socket.readyState !== 1) return;
      if (Date.now() - self.lastHeard > interval * 3) {
        self.socket.close();
        return;
      }
      self.send({type: "ping"});
    }, interval);
  };

  Client.prototype.stopPings = function () {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  };

  Client.prototype.get = function (path) {
    var headers = {"Accept": "application/json"};
    if (this.token) headers["Authorization"] = "Bearer " + this.token;
    return fetch(this.apiBase + path, {headers: headers}).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) {
          var error = new Error((body.error && body.error.message) || response.statusText);
          error.status = response.status;   // and the contract's error object, when there is one
          error.error = body.error || null;
          throw error;
        }
        return body;
      });
    });
  };

  root.Pylight = {Client: Client, Feed: Feed};
})(typeof window !== "undefined" ? window : this);
