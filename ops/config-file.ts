/**
 * `--config tenant-gateway.json` (or .yaml/.yml): the flags as a file. Keys are the flag names
 * (`http-port`, `access-log`, ...); values are strings, numbers, or for `trusted-proxies` a
 * list. Errors name the file and the key. Flags and TGW_* variables override the file.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

export class ConfigFileError extends Error {
  override readonly name = 'ConfigFileError';
}

/** Keys whose value may be a list (joined with ","). */
const LIST_KEYS = new Set(['trusted-proxies']);

/** Reads and validates `file`; returns each key's value as its flag text. */
export function readConfigFile(file: string, knownKeys: readonly string[]): Record<string, string> {
  const where = path.basename(file);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigFileError(`config file ${file} cannot be read: ${(err as Error).message}`);
  }
  const ext = path.extname(file).toLowerCase();
  let data: unknown;
  try {
    if (ext === '.json') data = JSON.parse(text);
    else if (ext === '.yaml' || ext === '.yml') data = YAML.parse(text, { prettyErrors: true });
    else throw new ConfigFileError(`config file ${file}: name it .json, .yaml or .yml so its format is known`);
  } catch (err) {
    if (err instanceof ConfigFileError) throw err;
    throw new ConfigFileError(`config file ${file} is not valid ${ext === '.json' ? 'JSON' : 'YAML'}: ${(err as Error).message}`);
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new ConfigFileError(`config file ${file} must hold a mapping of flag names to values, like {"http-port": 8080}`);
  }
  const known = new Set(knownKeys);
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(data)) {
    if (key === 'config') throw new ConfigFileError(`${where}: key "config": a config file cannot name another one`);
    if (!known.has(key)) {
      const guess = suggest(key, knownKeys);
      throw new ConfigFileError(`${where}: unknown key "${key}"${guess ? `; did you mean "${guess}"?` : ''} (keys are the flag names: ${knownKeys.join(', ')})`);
    }
    out[key] = flagText(where, key, value);
  }
  return out;
}

function flagText(where: string, key: string, value: unknown): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (Array.isArray(value) && LIST_KEYS.has(key) && value.every((v) => typeof v === 'string')) return value.join(',');
  const got = value === null ? 'null' : Array.isArray(value) ? 'a list' : typeof value;
  const want = LIST_KEYS.has(key) ? 'a string or a list of strings' : 'a string or a number';
  throw new ConfigFileError(`${where}: key "${key}" must be ${want}; got ${got}`);
}

/** "http_port", "httpPort", "HTTP-PORT" -> "http-port"; else a known key one edit away. */
function suggest(key: string, known: readonly string[]): string | undefined {
  const kebab = key.replace(/([a-z0-9])([A-Z])/g, '$1-$2').replaceAll('_', '-').toLowerCase();
  if (known.includes(kebab)) return kebab;
  return known.find((k) => editDistance(k, kebab) <= 2);
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}
