// Labels in Vietnamese (the default: venues are in Viet Nam) and English. Every string the page shows comes
// from here, so a missing translation is one place to look. Verdict names are the engine's (engine/verdicts.py).

export const LABELS = {
  vi: {
    title: "Quét mã QR cá nhân",
    lang_button: "EN",
    lang_name: "Tiếng Việt",
    enrol_title: "Đăng ký thiết bị",
    enrol_help: "Quét mã đăng ký do quản trị viên cấp, hoặc nhập mã bên dưới.",
    enrol_code: "Mã đăng ký",
    enrol_submit: "Đăng ký",
    enrol_working: "Đang đăng ký…",
    enrolled: "Đã đăng ký",
    reenrol: "Thiết bị đã bị thu hồi: cần đăng ký lại với mã mới.",
    reenrol_unknown: "Máy chủ không nhận ra thiết bị này: cần đăng ký lại với mã mới.",
    not_enrol_code: "Đây không phải mã đăng ký.",
    in: "Vào",
    out: "Ra",
    venue: "Địa điểm",
    device: "Thiết bị",
    camera_start: "Đang bật camera…",
    camera_on: "Đưa mã QR vào khung hình",
    camera_error: "Không mở được camera",
    decoder_error: "Không tải được bộ giải mã QR",
    ready: "Sẵn sàng quét",
    sending: "Đang gửi…",
    verified: "Hợp lệ",
    not_verified: "Không hợp lệ",
    not_accepted: "Không được nhận",
    queued: "Đã lưu, chờ gửi",
    queued_why: "ngoại tuyến: sẽ tự gửi khi có mạng",
    queue_count: "Chờ gửi: {n}",
    queue_empty: "Không có lượt quét chờ gửi",
    online: "Trực tuyến",
    offline: "Ngoại tuyến",
    retry_in: "thử lại sau {s} giây",
    clock: "đồng hồ thiết bị có thể sai",
    history: "Lượt quét gần đây",
    duplicate: "đã gửi trước đó",
    v_ok: "hợp lệ",
    v_bad_signature: "chữ ký sai",
    v_unknown_key: "khóa ký không rõ nguồn",
    v_revoked_key: "khóa ký đã bị thu hồi",
    v_revoked_code: "mã đã bị thu hồi",
    v_expired: "mã đã hết hạn",
    v_not_yet_valid: "mã chưa có hiệu lực",
    v_unsigned_code: "mã không có chữ ký",
    v_id_card: "mã CCCD, không phải mã cá nhân",
    v_malformed: "mã sai định dạng",
  },
  en: {
    title: "Personal QR scanner",
    lang_button: "VI",
    lang_name: "English",
    enrol_title: "Enrol this device",
    enrol_help: "Scan the enrolment code from your operator, or type it below.",
    enrol_code: "Enrolment code",
    enrol_submit: "Enrol",
    enrol_working: "Enrolling…",
    enrolled: "Enrolled",
    reenrol: "This device was revoked: it must re-enrol with a new code.",
    reenrol_unknown: "The engine does not know this device: it must re-enrol with a new code.",
    not_enrol_code: "This is not an enrolment code.",
    in: "Entry",
    out: "Exit",
    venue: "Venue",
    device: "Device",
    camera_start: "Starting the camera…",
    camera_on: "Hold the QR code in the frame",
    camera_error: "Cannot open the camera",
    decoder_error: "Cannot load the QR decoder",
    ready: "Ready to scan",
    sending: "Sending…",
    verified: "Verified",
    not_verified: "Not verified",
    not_accepted: "Not accepted",
    queued: "Queued offline",
    queued_why: "will be sent when the network returns",
    queue_count: "Waiting to send: {n}",
    queue_empty: "Nothing waiting to send",
    online: "Online",
    offline: "Offline",
    retry_in: "retrying in {s} s",
    clock: "the device clock may be wrong",
    history: "Recent scans",
    duplicate: "sent before",
    v_ok: "verified",
    v_bad_signature: "bad signature",
    v_unknown_key: "unknown signing key",
    v_revoked_key: "signing key revoked",
    v_revoked_code: "code revoked",
    v_expired: "code expired",
    v_not_yet_valid: "code not yet valid",
    v_unsigned_code: "unsigned code",
    v_id_card: "ID card, not a personal code",
    v_malformed: "malformed code",
  },
};

let current = "vi";

export function setLanguage(lang) {
  current = LABELS[lang] ? lang : "vi";
  document.documentElement.lang = current;
  for (const node of document.querySelectorAll("[data-i18n]")) {
    node.textContent = t(node.dataset.i18n);
  }
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  }
  return current;
}

export function language() {
  return current;
}

export function t(key, vars = {}) {
  const text = LABELS[current][key] ?? LABELS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

// "bad_signature" -> "bad signature" in the current language; an unknown verdict is shown as the engine sent it.
export function verdictLabel(verdict) {
  return LABELS[current]["v_" + verdict] ?? String(verdict).replaceAll("_", " ");
}
