"""What an escrow job costs, in its payment token: the catalog's rates for that token (no
exchange-rate oracle) applied to the job's size. A transcode is priced from its plan (the
probed source and the ladder), a model job from its inputs. Pure: no I/O."""
from __future__ import annotations

from decimal import Decimal

from chalicelib.catalog import JobClass
from chalicelib.errors import InvalidManifest
from chalicelib.media import profiles
from chalicelib.models import Job, Manifest, TranscodePlan
from chalicelib.settlement.money import to_base_units


class PriceAboveCeiling(InvalidManifest):
    reason = "price_above_ceiling"


def work_price(job_class: JobClass, manifest: Manifest, symbol: str, decimals: int) -> Decimal:
    """The charge in `symbol` of a job whose class is priced by time of work. A class or a
    token without a rate is refused: the job could not be charged."""
    quote = job_class.quote
    if quote is None:
        raise InvalidManifest(f"{job_class.name} jobs cannot be paid through an escrow",
                              reason="unpriced_class")
    rate = quote.per_second.get(symbol)
    if rate is None:
        raise InvalidManifest(f"{job_class.name} has no price in {symbol}",
                              reason="unpriced_token", details={"priced": sorted(quote.per_second)})
    items = len(manifest.texts or []) if manifest.texts is not None else (manifest.max_tokens or 64)
    seconds = quote.seconds_per_job + quote.seconds_per_item * items
    return _round_up(seconds * rate, decimals)


def transcode_price(plan: TranscodePlan, symbol: str, decimals: int) -> profiles.Quote:
    """A planned transcode's quote in `symbol`, from its source and ladder as probed."""
    source = plan.split.get("source", {})
    return profiles.quote(profiles.get_profile(plan.profile), duration_s=plan.duration_s,
                          source_width=source.get("width", 0),
                          source_height=source.get("height", 0),
                          rotation=source.get("rotation", 0) or 0,
                          source_bytes=sum(int(s.get("size_bytes", 0)) for s in plan.segments),
                          pricing=transcode_rates(symbol), places=decimals)


def transcode_rates(symbol: str) -> profiles.Pricing:
    pricing = profiles.default_profiles().pricing
    rates = pricing.in_token(symbol)
    if rates is None:
        raise InvalidManifest(f"transcodes have no price in {symbol}", reason="unpriced_token",
                              details={"priced": sorted(pricing.tokens)})
    return rates


def price(job: Job, job_class: JobClass) -> int | None:
    """The job's charge in base units of its payment token; None while it cannot be known
    (a transcode before its source is probed). Raises PriceAboveCeiling over the escrow,
    and InvalidManifest for a job that has no price in its token."""
    terms = job.escrow
    if job.plan is not None:
        amount = transcode_price(job.plan, terms.symbol, terms.decimals).total
    elif job_class.profiles:
        transcode_rates(terms.symbol)
        return None                  # a transcode is priced from its plan, once probed
    else:
        amount = work_price(job_class, job.manifest, terms.symbol, terms.decimals)
    units = to_base_units(amount, terms.decimals)
    if units > terms.amount:
        raise PriceAboveCeiling(
            f"the job is quoted {amount} {terms.symbol}, over its max_price",
            details={"price": str(amount), "max_price": str(job.manifest.max_price),
                     "symbol": terms.symbol})
    return units


def _round_up(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(10) ** -places, rounding="ROUND_CEILING")
