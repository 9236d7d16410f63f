// The camera and the QR decoder. Chromium on Linux (and Firefox) have no BarcodeDetector, so decoding is
// zxing-cpp compiled to WebAssembly (vendor/zxing-wasm, see its VERSION.txt), fetched from this engine: the
// package's default would fetch the .wasm from a CDN, which the page's CSP forbids and venues should not need.

import { prepareZXingModule, readBarcodes } from "./vendor/zxing-wasm/dist/es/reader/index.js";

const WASM_URL = new URL("./vendor/zxing-wasm/dist/reader/zxing_reader.wasm", import.meta.url).href;
const FRAME_INTERVAL_MS = 150;
const MAX_SIDE = 960; // enough pixels per module for a version-10 code across half the frame

export const READER_OPTIONS = {
  formats: ["QRCode"],
  tryHarder: true,
  maxNumberOfSymbols: 1,
  textMode: "Plain", // the text exactly as encoded, as engine/qr.py reads it: what is verified is what was seen
};

let decoderReady = null;

export function loadDecoder() {
  if (!decoderReady) {
    decoderReady = prepareZXingModule({
      overrides: {
        locateFile: (path, prefix) => (path.endsWith(".wasm") ? WASM_URL : prefix + path),
      },
      fireImmediately: true,
    });
  }
  return decoderReady;
}

export async function decode(imageData) {
  await loadDecoder();
  const results = await readBarcodes(imageData, READER_OPTIONS);
  return results.filter((r) => r.isValid && r.text).map((r) => r.text);
}

// Opens the rear camera (any camera if there is none) and calls onText(text) for every decoded frame.
export class Camera {
  constructor(video, onText, onError) {
    this.video = video;
    this.onText = onText;
    this.onError = onError;
    this.canvas = document.createElement("canvas");
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.stream = null;
    this.timer = null;
    this.frames = 0;
  }

  async start() {
    await loadDecoder();
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: false,
      video: { facingMode: { ideal: "environment" }, width: { ideal: 1280 }, height: { ideal: 720 } },
    });
    this.video.srcObject = this.stream;
    await this.video.play();
    this.loop();
  }

  loop() {
    this.timer = setTimeout(async () => {
      try {
        await this.tick();
      } catch (err) {
        this.onError(err);
      }
      if (this.stream) this.loop();
    }, FRAME_INTERVAL_MS);
  }

  async tick() {
    const v = this.video;
    if (v.readyState < 2 || !v.videoWidth) return;
    const scale = Math.min(1, MAX_SIDE / Math.max(v.videoWidth, v.videoHeight));
    const w = Math.round(v.videoWidth * scale);
    const h = Math.round(v.videoHeight * scale);
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.ctx.drawImage(v, 0, 0, w, h);
    const texts = await decode(this.ctx.getImageData(0, 0, w, h));
    this.frames += 1;
    for (const text of texts) this.onText(text);
  }

  stop() {
    clearTimeout(this.timer);
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
  }
}
