"""One-line errors for a bad command line (used by cli.py; no JAX).

absl parses the flags before any handler of ours runs, and ml_collections
applies `--config.x=y` overrides even earlier (when the config flag is
defined, if --config is not on the command line): a misspelt field used to
print a 52-line traceback. `describe` turns such a failure into one line
that names the flag and, for a field that does not exist, the closest ones
that do.
"""
import difflib
import re
from typing import Any, List, Optional, Sequence, Tuple

# The parser of DEFINE_config_file (not exported by ml_collections.config_flags).
from ml_collections.config_flags import config_flags

_OVERRIDE = re.compile(r'^--?(?:no)?config\.([^=\s]+)')
_CONFIG = re.compile(r'^--?config(?:=(.*))?$')


def _first_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).strip().splitlines()]
  text = next((line for line in lines if line), '')
  return text or type(e).__name__


def _config_path(argv: Sequence[str], default: str) -> str:
  for i, arg in enumerate(argv):
    match = _CONFIG.match(arg)
    if match:
      if match.group(1) is not None:
        return match.group(1)
      if i + 1 < len(argv):
        return argv[i + 1]
  return default


def _load(path: str) -> Tuple[Any, Optional[str]]:
  """(the config of the file `path`, None) or (None, an error line)."""
  try:
    config = config_flags.ConfigFileFlagParser('config').parse(path)
    return config, load_problem(config, path)
  except Exception as e:  # pylint: disable=broad-except
    return None, (f'cannot load --config={path} ({type(e).__name__}: '
                  f'{_first_line(e)})')


def load_problem(config: Any, path: str) -> Optional[str]:
  """An error line if the config file could not be loaded, else None.

  ml_collections hands out a placeholder that raises on first use.
  """
  try:
    config.keys()
  except OSError as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (f'cannot load --config={path} ({lines[-1] if lines else e}); '
            'give the path of a config file, e.g. configs/quickstart.py')
  return None


def _fields(config: Any, prefix: str = '') -> List[str]:
  out = []
  for key in config.keys():
    value = config[key]
    if hasattr(value, 'keys') and callable(value.keys):
      out.extend(_fields(value, f'{prefix}{key}.'))
    else:
      out.append(f'{prefix}{key}')
  return out


def unknown_field(config: Any, path: str) -> Optional[str]:
  """An error line if `path` (e.g. 'optim.lr') is no field of `config`."""
  node, done = config, []
  for part in path.split('.'):
    if not (hasattr(node, 'keys') and part in node.keys()):
      break
    node = node[part]
    done.append(part)
  else:
    return None
  fields = _fields(config)
  leaf = path.rsplit('.', 1)[-1]
  # The same name in another group, an abbreviation (lr: learning_rate),
  # then the closest spelling.
  close = [f for f in fields if f.rsplit('.', 1)[-1] == leaf]
  close += [f for f in fields if '_' in f and leaf == ''.join(
      w[:1] for w in f.rsplit('.', 1)[-1].split('_'))]
  if not close:
    close = difflib.get_close_matches(path, fields, n=1, cutoff=0.6)
  group = path.rsplit('.', 1)[0] if '.' in path else ''
  close = sorted(dict.fromkeys(close),
                 key=lambda f: not f.startswith(group + '.'))[:2]
  hint = ''
  if close:
    hint = '; did you mean ' + ' or '.join(f'--config.{f}'
                                           for f in close) + '?'
  missing = '.'.join(done + [path.split('.')[len(done)]])
  return (f'--config.{path}: the config has no field {missing!r}{hint} '
          '(every field is listed in configs/default.py)')


def describe(argv: Sequence[str], error: BaseException,
             default_config: str) -> str:
  """One line for a command line that failed to parse with `error`."""
  config, problem = _load(_config_path(argv, default_config))
  if problem:
    return problem
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if match:
      message = unknown_field(config, match.group(1))
      if message:
        return message
  return _first_line(error)
