/* Pylight browser client: live table feeds with reconnect and `since` resume.
 *
 *   const client = new Pylight.Client();            // same origin as the page
 *   const feed = client.subscribe("products", {
 *     filter: "price=gt.10",                         // optional, REST query language
 *     onChange(msg) {},                              // every change message
 *     onResync(msg) {},                              // re-read over REST: changes were missed
 *     onStatus(status) {},                           // "connecting" | "open" | "closed"
 *   });
 *   feed.close();
 *
 * No dependencies. A dropped connection is retried with exponential backoff
 * and resumed with ?since=<last seq seen>, so no change is lost while the
 * server's replay buffer covers the gap; otherwise the server sends resync.
 */
(function (root) {
  "use strict";

  function Feed(client, table, options) {
    this.client = client;
    this.table = table;
    this.options = options || {};
    this.seq = null;          // last seq seen, for resume
    this.attempt = 0;
    this.closed = false;
    this.socket = null;
    this.pingTimer = null;
    this.retryTimer = null;
    this.lastPong = 0;
    this.connect();
  }

  Feed.prototype.url = function () {
    var params = [];
    if (this.options.filter) params.push(this.options.filter);
    if (this.seq !== null) params.push("since=" + encodeURIComponent(this.seq));
    if (this.client.token) params.push("token=" + encodeURIComponent(this.client.token));
    return this.client.wsBase + "/" + encodeURIComponent(this.table) +
      (params.length ? "?" + params.join("&") : "");
  };

  Feed.prototype.status = function (value) {
    this.state = value;
    if (this.options.onStatus) this.options.onStatus(value, this);
  };

  Feed.prototype.connect = function () {
    var self = this;
    if (this.closed) return;
    this.status("connecting");
    var socket;
    try {
      socket = new WebSocket(this.url());
    } catch (err) {
      this.scheduleRetry();
      return;
    }
    this.socket = socket;
    socket.onopen = function () {
      self.attempt = 0;
      self.lastPong = Date.now();
      self.status("open");
      self.startPings();
    };
    socket.onmessage = function (event) {
      var msg;
      try { msg = JSON.parse(event.data); } catch (err) { return; }
      self.lastPong = Date.now();
      if (msg.type === "hello") {
        self.heartbeat = msg.heartbeat || 20;
        if (self.seq === null) self.seq = msg.seq;
        if (self.options.onHello) self.options.onHello(msg, self);
      } else if (msg.type === "resync") {
        self.seq = msg.seq;
        if (self.options.onResync) self.options.onResync(msg, self);
      } else if (msg.type === "change") {
        if (typeof msg.seq === "number") self.seq = msg.seq;
        if (self.options.onChange) self.options.onChange(msg, self);
      }
    };
    socket.onclose = function () {
      self.stopPings();
      self.socket = null;
      if (self.closed) {
        self.status("closed");
      } else {
        self.status("connecting");
        self.scheduleRetry();
      }
    };
    socket.onerror = function () { /* onclose follows and retries */ };
  };

  Feed.prototype.scheduleRetry = function () {
    var self = this;
    if (this.closed || this.retryTimer) return;
    var base = Math.min(this.client.maxDelay, this.client.minDelay * Math.pow(2, this.attempt));
    var delay = base / 2 + Math.random() * base / 2;   // jitter: clients don't reconnect in step
    this.attempt += 1;
    this.retryTimer = setTimeout(function () {
      self.retryTimer = null;
      self.connect();
    }, delay);
  };

  // Browsers cannot send ping frames: send {"type":"ping"} and expect any
  // message back; silence past two intervals means the link is dead.
  Feed.prototype.startPings = function () {
    var self = this;
    this.stopPings();
    var interval = Math.max(1000, (this.heartbeat || 20) * 1000 / 2);
    this.pingTimer = setInterval(function () {
      if (!self.socket || self.socket.readyState !== 1) return;
      if (Date.now() - self.lastPong > interval * 3) {
        self.socket.close();
        return;
      }
      try { self.socket.send('{"type":"ping"}'); } catch (err) { /* closing */ }
    }, interval);
  };

  Feed.prototype.stopPings = function () {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  };

  Feed.prototype.close = function () {
    this.closed = true;
    this.stopPings();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.socket) this.socket.close(1000);
    else this.status("closed");
  };

  function Client(options) {
    options = options || {};
    var origin = options.url || (root.location ? root.location.origin : "http://127.0.0.1:8000");
    this.apiBase = origin + (options.apiPrefix || "/api");
    this.wsBase = origin.replace(/^http/, "ws") + (options.wsPrefix || "/ws");
    this.token = options.token || null;
    this.minDelay = options.minDelay || 500;
    this.maxDelay = options.maxDelay || 10000;
  }

  Client.prototype.subscribe = function (table, options) {
    return new Feed(this, table, options);
  };

  Client.prototype.get = function (path) {
    var headers = {"Accept": "application/json"};
    if (this.token) headers["Authorization"] = "Bearer " + this.token;
    return fetch(this.apiBase + path, {headers: headers}).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
        return body;
      });
    });
  };

  root.Pylight = {Client: Client, Feed: Feed};
})(typeof window !== "undefined" ? window : this);
