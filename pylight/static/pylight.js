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
 *     onError(error) {},                             // the subscription was refused (it stops)
 *   });
 *   feed.close();
 *
 * No dependencies. All subscriptions of a client share one socket to /ws. A
 * dropped connection is retried with exponential backoff and each subscription
 * resumed with its own `since` (the last seq it saw), so no change is lost while
 * the server's replay buffer covers the gap; otherwise the server sends resync.
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
    var url = this.wsUrl + (this.token ? "?token=" + encodeURIComponent(this.token) : "");
    var socket;
    try {
      socket = new WebSocket(url);
    } catch (err) {
      this.scheduleRetry();
      return;
    }
    this.socket = socket;
    socket.onopen = function () {
      self.attempt = 0;
      self.open = true;
      self.lastHeard = Date.now();
      Object.keys(self.feeds).forEach(function (id) { self.send(self.feeds[id].request()); });
    };
    socket.onmessage = function (event) {
      var msg;
      try { msg = JSON.parse(event.data); } catch (err) { return; }
      self.lastHeard = Date.now();
      if (msg.type === "hello") {
        self.startPings(msg.heartbeat || 20);
      } else if (msg.sub !== undefined && self.feeds[msg.sub]) {
        self.feeds[msg.sub].receive(msg);
      }
    };
    socket.onclose = function () {
      self.stopPings();
      self.socket = null;
      self.open = false;
      var waiting = Object.keys(self.feeds);
      waiting.forEach(function (id) { self.feeds[id].status("connecting"); });
      if (waiting.length) self.scheduleRetry();
    };
    socket.onerror = function () { /* onclose follows and retries */ };
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
        if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
        return body;
      });
    });
  };

  root.Pylight = {Client: Client, Feed: Feed};
})(typeof window !== "undefined" ? window : this);
