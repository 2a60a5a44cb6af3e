/* BlurHash decoder (https://blurha.sh), written for Darkroom after the algorithm of
 * woltapp/blurhash's reference decoder (MIT licence). window.blurhash.decode(hash, w, h)
 * returns the w x h RGBA pixels of the placeholder; throws on a malformed hash. */
(function () {
  "use strict";
  var DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";

  function decode83(s) {
    var v = 0;
    for (var i = 0; i < s.length; i++) {
      var d = DIGITS.indexOf(s.charAt(i));
      if (d < 0) throw new Error("blurhash: bad character");
      v = v * 83 + d;
    }
    return v;
  }
  function toLinear(v) {
    var x = v / 255;
    return x <= 0.04045 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4);
  }
  function toSRGB(v) {
    var x = Math.max(0, Math.min(1, v));
    return x <= 0.0031308 ? Math.round(x * 12.92 * 255 + 0.5)
      : Math.round((1.055 * Math.pow(x, 1 / 2.4) - 0.055) * 255 + 0.5);
  }
  function signPow(v, e) { return (v < 0 ? -1 : 1) * Math.pow(Math.abs(v), e); }
  function decodeDC(v) { return [toLinear(v >> 16), toLinear((v >> 8) & 255), toLinear(v & 255)]; }
  function decodeAC(v, max) {
    var r = Math.floor(v / 361), g = Math.floor(v / 19) % 19, b = v % 19;
    return [signPow((r - 9) / 9, 2) * max, signPow((g - 9) / 9, 2) * max, signPow((b - 9) / 9, 2) * max];
  }

  function decode(hash, width, height, punch) {
    if (typeof hash !== "string" || hash.length < 6) throw new Error("blurhash: too short");
    var flag = decode83(hash.charAt(0));
    var ny = Math.floor(flag / 9) + 1, nx = (flag % 9) + 1;
    if (hash.length !== 4 + 2 * nx * ny) throw new Error("blurhash: wrong length");
    var max = (decode83(hash.charAt(1)) + 1) / 166 * (punch || 1);
    var colors = [decodeDC(decode83(hash.substring(2, 6)))];
    for (var i = 1; i < nx * ny; i++) colors.push(decodeAC(decode83(hash.substring(4 + i * 2, 6 + i * 2)), max));
    var px = new Uint8ClampedArray(width * height * 4);
    for (var y = 0; y < height; y++) {
      for (var x = 0; x < width; x++) {
        var r = 0, g = 0, b = 0;
        for (var j = 0; j < ny; j++) {
          var cy = Math.cos(Math.PI * y * j / height);
          for (var k = 0; k < nx; k++) {
            var basis = Math.cos(Math.PI * x * k / width) * cy, c = colors[k + j * nx];
            r += c[0] * basis; g += c[1] * basis; b += c[2] * basis;
          }
        }
        var o = 4 * (x + y * width);
        px[o] = toSRGB(r); px[o + 1] = toSRGB(g); px[o + 2] = toSRGB(b); px[o + 3] = 255;
      }
    }
    return px;
  }

  window.blurhash = { decode: decode };
})();
