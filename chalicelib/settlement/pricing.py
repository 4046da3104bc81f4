"""What an escrow job costs, in its payment token: the catalog's rates for that token (no
exchange-rate oracle) applied to the job's size. A transcode is priced from its plan (the
probed source and the ladder), a model job from its inputs. Pure: no I/O."""
from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.catalog import Catalog, JobClass
from chalicelib.errors import InvalidManifest, InvalidRequest
from chalicelib.media import profiles
from chalicelib.models import Job, Manifest, PaymentToken, TranscodePlan
from chalicelib.settlement.money import from_base_units, to_base_units


class PriceAboveCeiling(InvalidManifest):
    reason = "price_above_ceiling"


def items(manifest: Manifest) -> int:
    """What a job's quoted seconds scale with: its texts, or the tokens it asks for."""
    return len(manifest.texts) if manifest.texts is not None else (manifest.max_tokens or 64)


def work_price(job_class: JobClass, count: int, symbol: str, decimals: int) -> Decimal:
    """The charge in `symbol` of a job whose class is priced by time of work, for `count`
    items. A class or a token without a rate is refused: the job could not be charged."""
    quote = job_class.quote
    if quote is None:
        raise InvalidManifest(f"{job_class.name} jobs cannot be paid through an escrow",
                              reason="unpriced_class")
    rate = quote.per_second.get(symbol)
    if rate is None:
        raise InvalidManifest(f"{job_class.name} has no price in {symbol}",
                              reason="unpriced_token", details={"priced": sorted(quote.per_second)})
    seconds = quote.seconds_per_job + quote.seconds_per_item * count
    return _round_up(seconds * rate, decimals)


def transcode_price(plan: TranscodePlan, symbol: str, decimals: int) -> profiles.Quote:
    """A planned transcode's quote in `symbol`, from its source as the planner probed it:
    the same facts, rates and rounding as a quote of that file before submitting."""
    source = plan.split.get("source", {})
    return profiles.quote(profiles.get_profile(plan.profile),
                          duration_s=source.get("duration_s", plan.duration_s),
                          source_width=source.get("width", 0),
                          source_height=source.get("height", 0),
                          rotation=source.get("rotation", 0) or 0,
                          source_bytes=source.get("size_bytes", sum(
                              int(s.get("size_bytes", 0)) for s in plan.segments)),
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
        amount = work_price(job_class, items(job.manifest), terms.symbol, terms.decimals)
    units = to_base_units(amount, terms.decimals)
    if units > terms.amount:
        raise PriceAboveCeiling(
            f"the job is quoted {amount} {terms.symbol}, over its max_price",
            details={"price": str(amount), "max_price": str(job.manifest.max_price),
                     "symbol": terms.symbol})
    return units


def _round_up(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(10) ** -places, rounding="ROUND_CEILING")


# -- quotes before a job is submitted (POST /quotes) ----------------------------------------
class SourceFacts(BaseModel):
    """A transcode source as probed (`proofline transcode quote` probes the file locally)."""
    model_config = ConfigDict(extra="forbid")
    duration_s: Annotated[float, Field(gt=0, le=86_400)]
    width: Annotated[int, Field(ge=2, le=16_384)]
    height: Annotated[int, Field(ge=2, le=16_384)]
    rotation: Literal[0, 90, 180, 270, -90, -180, -270] = 0
    size_bytes: Annotated[int, Field(ge=0, le=1 << 40)]


class QuoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    payment_token: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,16}$")] = "ETH"
    profile: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")] | None = None
    source: SourceFacts | None = None
    texts: Annotated[int, Field(ge=1, le=100_000)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=4_096)] | None = None


def quote(request: QuoteRequest, *, catalog: Catalog,
          tokens: Mapping[str, PaymentToken]) -> dict:
    """What a job would be charged on this stage, in its payment token: the same rates and
    rounding the escrow's price will use (a transcode's from its probed source)."""
    job_class = catalog.job_class(request.kind)
    token = tokens.get(request.payment_token)
    if token is None:
        raise InvalidManifest(f"payment token {request.payment_token!r} is not accepted on "
                              "this stage", reason="unknown_payment_token",
                              details={"known": sorted(tokens)})
    answer = {"kind": job_class.name, "symbol": token.symbol, "decimals": token.decimals}
    if job_class.profiles:
        name = request.profile or job_class.defaults.profile
        if name not in job_class.profiles or request.source is None:
            raise InvalidRequest("a transcode quote needs a profile of its class and its "
                                 "source's facts (duration_s, width, height, size_bytes)",
                                 reason="missing_source",
                                 details={"profiles": sorted(job_class.profiles)})
        src = request.source
        priced = profiles.quote(profiles.get_profile(name), duration_s=src.duration_s,
                                source_width=src.width, source_height=src.height,
                                rotation=src.rotation, source_bytes=src.size_bytes,
                                pricing=transcode_rates(token.symbol), places=token.decimals)
        price = priced.total
        answer.update(profile=name, renditions=[r.name for r in priced.renditions],
                      breakdown={"compute": str(priced.compute), "storage": str(priced.storage),
                                 "transfer": str(priced.transfer)})
    else:
        count = request.texts if request.texts is not None else (request.max_tokens or 64)
        price = work_price(job_class, count, token.symbol, token.decimals)
    units = to_base_units(price, token.decimals)
    return {**answer, "price": str(from_base_units(units, token.decimals)), "price_units": units}
