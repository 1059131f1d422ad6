// An approval's arguments, read back from its summary (ferrohsm/domain/approval.py summarize):
// "name: value" parts joined by ", ", names sorted; a reason or description as Python's repr of
// the string, cut after 10,250 characters with "… (cut: N characters in all)"; other values as
// plain text ("version: 2", "data: 32 bytes"). The dashboard needs them to prefill what was
// approved and to tell whether a request repeats the approved one (only then does it send the
// approval's id): the approval object carries no other view of its arguments.

const CUT = /^… \(cut: \d+ characters in all\)/u;
const SHOWN = 10250; // approval.py SHOWN_TEXT: characters of the repr shown before a cut
const NAME = /^([a-z_]+): /;
const ESCAPES = { "\\": "\\", "'": "'", '"': '"', n: "\n", r: "\r", t: "\t" };
const HEX = { x: 2, u: 4, U: 8 };

/** Map name -> {value, cut} (cut: ``value`` is only the start of the text), or null when the
 * summary is not in the expected form (then nothing is prefilled or matched). */
export function requestArgs(summary) {
  if (typeof summary !== "string") return null;
  const args = new Map();
  let rest = summary;
  while (rest) {
    const name = rest.match(NAME);
    if (!name) return null;
    rest = rest.slice(name[0].length);
    const read = rest.startsWith("'") || rest.startsWith('"') ? text(rest) : plain(rest);
    if (read === null) return null;
    args.set(name[1], { value: read.value, cut: read.cut });
    rest = read.rest;
    if (rest && !rest.startsWith(", ")) return null;
    rest = rest.slice(2);
  }
  return args;
}

function plain(rest) {
  const end = rest.search(/, [a-z_]+: /);
  return end < 0 ? { value: rest, cut: false, rest: "" }
    : { value: rest.slice(0, end), cut: false, rest: rest.slice(end) };
}

/** A Python str repr at the start of ``rest``, whole or cut (then read as far as it goes). */
function text(rest) {
  const points = Array.from(rest);
  const after = points.slice(SHOWN).join("");
  if (CUT.test(after)) {
    const read = literal(points.slice(0, SHOWN).join(""), true);
    return read && { value: read.value, cut: true, rest: after.replace(CUT, "") };
  }
  const read = literal(rest, false);
  return read && { value: read.value, cut: false, rest: read.rest };
}

function literal(source, partial) {
  const quote = source[0];
  let value = "";
  for (let i = 1; i < source.length; i += 1) {
    const c = source[i];
    if (c === quote) return { value, rest: source.slice(i + 1) };
    if (c !== "\\") {
      value += c;
      continue;
    }
    const e = source[i + 1];
    if (e === undefined) return partial ? { value } : null;
    if (ESCAPES[e] !== undefined) {
      value += ESCAPES[e];
      i += 1;
    } else if (HEX[e]) {
      const digits = source.slice(i + 2, i + 2 + HEX[e]);
      if (digits.length < HEX[e]) return partial ? { value } : null;
      if (!/^[0-9a-f]+$/i.test(digits)) return null;
      value += String.fromCodePoint(parseInt(digits, 16));
      i += 1 + HEX[e];
    } else {
      return null;
    }
  }
  return partial ? { value } : null;
}
