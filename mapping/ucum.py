"""Is a unit string a plausible UCUM code? (decides Quantity.system/code for OBX-6)

Hand-written because no UCUM library is a dependency of this project; this checks the UCUM
syntax (terms joined by ``.`` and ``/``, exponents, ``10*n`` factors, ``{annotations}``) over
the atoms met in laboratory and vital-sign results. It says "plausible", not "valid": a false
"no" only costs the coded unit (the text is always kept), a false "yes" is limited to
well-formed expressions of real atoms. UCUM is case-sensitive, so ``mg/dl`` passes and
``mEq/L`` or ``IU/L`` (UCUM: ``meq/L``, ``[IU]/L``) do not.
"""

from __future__ import annotations

import re
from functools import lru_cache

_PREFIXES = ("da", *"YZEPTGMkhdcmunpfazy")


def _words(text: str) -> frozenset[str]:
    """A word list reads better than a hundred quoted strings."""
    return frozenset(text.split())


# Atoms that take a metric prefix.
_METRIC = _words(
    "m s g rad K C cd mol sr Hz N Pa J W A V F Ohm S Wb T H Cel lm lx Bq Gy Sv L l ar t bar u "
    "eV pc eq osm kat U [IU] [iU] cal Ci R RAD REM g% dyn erg P St G Mx Oe Gb sb Lmb ph Np B "
    "m[Hg] m[H2O] B[SPL] B[V] B[mV] B[uV] B[W] B[kW] mho st gf Ky Gal [g] [c] [h] [k] [e] "
    "[G] bit By Bd"
)
# Atoms that do not.
_PLAIN = _words(
    "1 10* 10^ % [pi] [ppth] [ppm] [ppb] [pptr] min h d wk mo a a_t a_j a_g mo_j mo_g mo_s "
    "deg ' '' gon circ sph [in_i] [ft_i] [yd_i] [mi_i] [lb_av] [oz_av] [gr] [dr_av] [degF] "
    "[degR] [pH] [arb'U] [USP'U] [CFU] [drp] [HPF] [LPF] [todd'U] [tsp_us] [tbs_us] [foz_us] "
    "[gal_us] [pt_us] [qt_us] [cup_us] [Btu] [HP] [mesh_i] [S] [beth'U] [MPL'U] [GPL'U] "
    "[APL'U] [kp_C] [m_e] [mu_0] [ka'U] [knk'U] [mclg'U] [tb'U] [PFU] [FFU] [BAU] [AU] "
    "[Lf] [D'ag'U] [EID_50] [TCID_50] [CCID_50] [PNU] [smgy'U] [bdsk'U] [dye'U] [hnsf'U] "
    "[mm'U] [IR] [Amb'a'1'U] [lne] [pca] [Ch] [hp'_X] [hp'_C] [hp'_M] [hp'_Q] [kn_i] [lcwt_av] "
    "[scwt_av] [ston_av] [lton_av] [stone_av] [acr_us] [mil_i] [cml_i] [wood'U] [anti'Xa'U]"
)

_ANNOTATION = re.compile(r"\{[^{}]*\}$")
_UNIT_EXPONENT = re.compile(r"(?P<unit>.*?[^\d+-])(?P<exp>[+-]?\d+)?")


def _simple_unit(unit: str) -> bool:
    if unit in _PLAIN or unit in _METRIC:
        return True
    return any(unit.startswith(p) and unit[len(p) :] in _METRIC for p in _PREFIXES)


def _component(text: str) -> bool:
    annotated = _ANNOTATION.search(text)
    if annotated:
        text = text[: annotated.start()]
        if not text:
            return True
    if text.isdigit():
        return True
    match = _UNIT_EXPONENT.fullmatch(text)
    return match is not None and _simple_unit(match.group("unit"))


@lru_cache(maxsize=1024)
def is_plausible_ucum(code: str) -> bool:
    if not code or " " in code or "(" in code or len(code) > 64:
        return False
    if code.isdigit() and code != "1":
        return False  # a bare number is UCUM syntax but, as a unit, a code from another system
    body = code[1:] if code.startswith("/") else code
    terms = re.split(r"[./](?![^{]*\})", body)  # split outside annotations only
    return all(term and _component(term) for term in terms)
