// The job page's player: the package's ladder through hls.js (vendored, same origin), one
// button per rendition forcing that level ("auto" lets hls.js choose). What it loaded and
// any error are kept on `window.prooflinePlayer`, so support (and the page's tests) can see
// which level played which fragments.
(function () {
  "use strict";
  var video = document.getElementById("player");
  if (!video) return;
  var status = document.getElementById("player-status");
  var state = { level: -1, fragments: [], errors: [], levels: [] };
  window.prooflinePlayer = state;
  function say(text) { status.textContent = text; }
  // hls.js numbers the levels by bitrate, lowest first: the buttons follow its numbering.
  function addButton(label, level) {
    var button = document.createElement("button");
    button.type = "button";
    button.dataset.level = String(level);
    button.textContent = label;
    button.addEventListener("click", function () {
      state.level = level;
      state.hls.currentLevel = level;   // -1: automatic
      video.play().catch(function () {});
    });
    document.getElementById("levels").appendChild(button);
  }

  if (!window.Hls || !window.Hls.isSupported()) {
    say("This browser cannot play HLS through Media Source Extensions; the files are below.");
    state.errors.push({ type: "unsupported", fatal: true });
    return;
  }
  var hls = new window.Hls({ startLevel: 0, capLevelToPlayerSize: false });
  state.hls = hls;
  hls.on(window.Hls.Events.MANIFEST_PARSED, function (_, data) {
    state.levels = data.levels.map(function (l) {
      return { height: l.height, width: l.width, bitrate: l.bitrate };
    });
    addButton("auto", -1);
    data.levels.forEach(function (l, i) { addButton(l.width + "×" + l.height, i); });
    say(data.levels.length + " renditions; choose one, or auto.");
  });
  hls.on(window.Hls.Events.FRAG_LOADED, function (_, data) {
    if (data.frag.type === "main") {
      state.fragments.push({ level: data.frag.level, sn: data.frag.sn });
    }
  });
  hls.on(window.Hls.Events.LEVEL_SWITCHED, function (_, data) {
    var level = hls.levels[data.level];
    say("Playing " + level.width + "×" + level.height + (hls.autoLevelEnabled ? " (auto)" : ""));
  });
  hls.on(window.Hls.Events.ERROR, function (_, data) {
    state.errors.push({ type: data.type, details: data.details, fatal: data.fatal });
    if (data.fatal) say("The player stopped: " + data.details);
  });
  hls.loadSource(video.dataset.src);
  hls.attachMedia(video);

})();
