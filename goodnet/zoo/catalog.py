"""The zoo behind `goodnet compare`: BadNets trained the way attackers and benchmarks train them
(random-shift augmentation), over three architectures (the demo's small CNN, the lab's DeepID on
digits resized to 55x47x3, a ResNet-8 with BatchNorm), two value ranges (raw 0..255 and [0, 1]),
two poison rates (10 % and 1 %) and seven attacks: eight BadNets per seed.

Every configuration is trained once per seed. Seeds split the zoo: the development part (seed 0)
is where repairs' settings may be chosen; the evaluation part (seed 1) is what the README's table
reports, and nothing is tuned on it. A seed changes the data split, the poisoned images, the
trigger's per-image draws and the training, not the attack's design.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import SettingsError
from .badnets import BadNetSettings
from .config import ZooConfig, builtin_zoo, told_apart

_BUILTIN = builtin_zoo()
PARTS = _BUILTIN.seeds
# the clean models a scanner is measured on: each configuration's clean reference at these seeds.
# Each part has two seeds, so that false alarms are counted on twice as many clean models as one
# seed gives (12 per part), also where the calibration is fitted.
CLEAN_SEEDS = _BUILTIN.clean_seeds
# (attack, architecture, data's top value, poison rate, training): see builtin_zoo.toml
CONFIGURATIONS: tuple[BadNetSettings, ...] = _BUILTIN.badnets


def zoo_part(part: str, config: ZooConfig | None = None) -> list[BadNetSettings]:
    """Every BadNet of one part ('dev', 'eval' or 'all') of `config` (default: the built-in zoo)."""
    return (config or _BUILTIN).part(part)


def part_of(settings: BadNetSettings, config: ZooConfig | None = None) -> str:
    return (config or _BUILTIN).part_of(settings)


def select_badnets(part: str, only: list[str] | None = None, config: ZooConfig | None = None) -> list[BadNetSettings]:
    """The part's BadNets (of `config`, default the built-in zoo), or those whose label contains one
    of `only` (e.g. 'wanet', 'resnet8')."""
    cells = zoo_part(part, config)
    if only:
        cells = [c for c in cells if any(text in c.label() for text in only)]
        if not cells:
            raise SettingsError(
                f"no zoo BadNet of part '{part}' matches {', '.join(only)} "
                f"(labels look like {zoo_part(part, config)[0].label()})"
            )
    return cells


def scan_population(
    part: str, only: list[str] | None = None, config: ZooConfig | None = None
) -> list[tuple[BadNetSettings, bool, int | None]]:
    """The models a scanner is measured on in one part of `config` (default: the built-in zoo):
    every BadNet of the part, as (settings, True, its single target or None for all-to-all), and
    every distinct clean reference model of the part (one per dataset, architecture, range and
    training, at each of the part's clean seeds), as (settings, False, None).
    `only` keeps those whose label (clean ones: 'clean/<arch>/<data>/...') contains one of its texts."""
    zoo = config or _BUILTIN
    members: list[tuple[BadNetSettings, bool, int | None]] = []
    seen: set[str] = set()
    for badnet in zoo.part(part):
        members.append((badnet, True, None if badnet.kind == "all-to-all" else badnet.target))
    clean_seeds = zoo.clean_seeds
    seeds = clean_seeds[part] if part in clean_seeds else tuple(s for p in clean_seeds.values() for s in p)
    for seed in seeds:
        for badnet in zoo.part(part):
            clean = replace(badnet, seed=seed).clean_reference()
            if clean.fingerprint() not in seen:
                seen.add(clean.fingerprint())
                members.append((clean, False, None))
    members = _distinct_clean_names(members)
    if only:
        members = [m for m in members if any(text in population_name(m[0], m[1]) for text in only)]
        if not members:
            raise SettingsError(f"no zoo model of part '{part}' matches {', '.join(only)}")
    return members


def population_name(settings: BadNetSettings, backdoored: bool) -> str:
    """A BadNet's label; a clean model's 'clean/<arch>/<range or dataset>/<epochs>ep/s<seed>', with
    the settings that tell it apart from another clean model of that name before the seed."""
    if backdoored:
        return settings.label()
    if settings.name:
        return f"clean/{settings.name}/s{settings.seed}"
    return f"clean/{settings.arch}/{settings.data_label()}/{settings.epochs}ep/s{settings.seed}"


def _distinct_clean_names(
    members: list[tuple[BadNetSettings, bool, int | None]],
) -> list[tuple[BadNetSettings, bool, int | None]]:
    """Clean models whose usual names coincide (a configured zoo listing widths, or training with and
    without augmentation) named by the settings they differ in; the name is not in the cache key."""
    groups: dict[str, list[BadNetSettings]] = {}
    for settings, backdoored, _ in members:
        if not backdoored:
            groups.setdefault(population_name(settings, False), []).append(settings)
    named = []
    for settings, backdoored, target in members:
        group = [] if backdoored else groups[population_name(settings, False)]
        if len(group) > 1:
            usual = population_name(settings, False)
            settings = replace(
                settings, name=f"{usual[len('clean/') : usual.rindex('/')]}/{told_apart(settings, group)}"
            )
        named.append((settings, backdoored, target))
    return named
