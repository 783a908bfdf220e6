// Language, money and time for every page: Simplified Chinese first, English as a switch (kept in localStorage),
// money as ¥1,234.50, times in Asia/Shanghai. Pages register their own dictionaries; `t` falls back to Chinese,
// then to the key itself (so a missing entry is visible, not blank).
const KEY = 'scenefin.lang';
export const LANGS = [{ code: 'zh-CN', label: '中文' }, { code: 'en', label: 'English' }];
const dictionaries = { 'zh-CN': {}, en: {} };
let lang = (() => {
  try { return LANGS.some((l) => l.code === localStorage.getItem(KEY)) ? localStorage.getItem(KEY) : 'zh-CN'; } catch { return 'zh-CN'; }
})();

/// Adds entries: `{ 'zh-CN': {key: text}, en: {key: text} }`. Texts may hold `{name}` placeholders.
export function register(entries) {
  for (const [code, texts] of Object.entries(entries)) Object.assign(dictionaries[code] ??= {}, texts);
}

export const currentLang = () => lang;

/// The text of `key` in the current language, `{name}` placeholders filled from `vars`.
export function t(key, vars = {}) {
  const text = dictionaries[lang]?.[key] ?? dictionaries['zh-CN'][key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (vars[name] ?? `{${name}}`));
}

/// Switches the language, re-renders the static texts and tells the page (event `langchange` on document).
export function setLang(code) {
  if (!LANGS.some((l) => l.code === code)) return;
  lang = code;
  try { localStorage.setItem(KEY, code); } catch { /* private mode: the switch holds for this page only */ }
  applyStatic();
  document.dispatchEvent(new CustomEvent('langchange', { detail: code }));
}

/// Fills elements marked `data-i18n` (text), `data-i18n-placeholder`, `data-i18n-aria-label` and `data-i18n-title`.
export function applyStatic(root = document) {
  document.documentElement.lang = lang;
  for (const node of root.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const attr of ['placeholder', 'aria-label', 'title']) {
    const data = `data-i18n-${attr}`;
    for (const node of root.querySelectorAll(`[${data}]`)) node.setAttribute(attr, t(node.getAttribute(data)));
  }
}

/// Money in fen as ¥1,234.50 (negative as -¥12.00); '-' for none.
export function yuan(fen) {
  if (fen === null || fen === undefined || Number.isNaN(Number(fen))) return '-';
  const n = Number(fen);
  const abs = Math.abs(n);
  const whole = Math.floor(abs / 100).toLocaleString('en-US');
  return `${n < 0 ? '-' : ''}¥${whole}.${String(abs % 100).padStart(2, '0')}`;
}

/// An RFC 3339 instant as an Asia/Shanghai date and time in the current language ('-' for none).
export function shanghaiTime(iso, { date = true, time = true } = {}) {
  if (!iso) return '-';
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return String(iso);
  const options = { timeZone: 'Asia/Shanghai', hour12: false };
  // English reads as `7 Dec 2026, 19:44` (a numeric day and month would be read either way round).
  const english = lang === 'en';
  if (date) Object.assign(options, { year: 'numeric', month: english ? 'short' : '2-digit', day: english ? 'numeric' : '2-digit' });
  if (time) Object.assign(options, { hour: '2-digit', minute: '2-digit' });
  return new Intl.DateTimeFormat(english ? 'en-GB' : lang, options).format(at);
}

/// A language switch (buttons, the current one pressed) for a page header.
export function langSwitch() {
  const nav = document.createElement('div');
  nav.className = 'lang-switch';
  nav.setAttribute('role', 'group');
  nav.setAttribute('aria-label', 'Language / 语言');
  const render = () => nav.replaceChildren(...LANGS.map((l) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = l.label;
    b.lang = l.code;
    b.setAttribute('aria-pressed', String(l.code === lang));
    b.addEventListener('click', () => setLang(l.code));
    return b;
  }));
  render();
  document.addEventListener('langchange', render);
  return nav;
}
