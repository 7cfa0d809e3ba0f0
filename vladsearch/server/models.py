"""Request and response bodies, mirroring the command line's JSON (`search --json`, `add --json`, `info --json`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Match(BaseModel):
    """One database image, as `search --json` prints it (verdict … mirrored only when verification ran)."""

    image: str = Field(description="indexed path: relative to the index's root (absolute for files added from elsewhere)")
    score: float = Field(description="cosine similarity of the VLAD vectors (the list's order is the answer's)")
    verdict: str | None = Field(None, description='"identical", "copy", "same scene", or null: not confirmed')
    confidence: float | None = Field(None, description="precision measured at this verdict and inlier count, [0, 1]")
    verified: bool | None = Field(None, description="true only for a confirmed match")
    inliers: int | None = Field(None, description="local feature matches consistent with one geometry")
    vlad_score: float | None = None
    mirrored: bool | None = Field(None, description="confirmed with the query mirrored (a flipped copy)")


class SearchResponse(BaseModel):
    """One element of `search --json`, plus the server-side time taken."""

    query: str = Field(description="the uploaded file's name")
    answer: str | None = Field(None, description='the best verdict, or "not in the collection" (when verification ran)')
    matches: list[Match]
    error: str | None = Field(None, description="set when the query has no keypoints (matches is then empty)")
    seconds: float = Field(description="time taken by the server for this query (decode, extraction, search)")


class SkippedFile(BaseModel):
    path: str
    reason: str


class AddedImage(BaseModel):
    name: str = Field(description="the uploaded file's name")
    image: str = Field(description="its indexed path (uploads/…), as search returns it")


class AddResponse(BaseModel):
    """`add --json`, plus where each upload was stored."""

    indexed: int
    unchanged: int
    replaced: int
    skipped: list[SkippedFile]
    no_keypoints: list[str]
    images: list[AddedImage]
    seconds: float


class RemoveResponse(BaseModel):
    removed: str
    vectors: int = Field(description="vectors left in the index")


class Counts(BaseModel):
    model_config = ConfigDict(extra="allow")

    images: int
    vectors: int
    indexed: int
    no_keypoints: int
    skipped: int
    segments: int
    deletions: int


class InfoResponse(BaseModel):
    """`info --json`."""

    model_config = ConfigDict(extra="allow")

    format_version: Any = None
    created_by: str | None = None
    created: Any = None
    updated: Any = None
    commits: int
    root: str
    params: dict[str, Any]
    features: dict[str, Any]
    weights_path: str | None = None
    dim: int
    counts: Counts
    segments: list[dict[str, Any]]
    timings: dict[str, Any]
    skipped_files: list[SkippedFile]
    no_keypoint_files: list[str]


class ErrorResponse(BaseModel):
    error: str


ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "bad request: not an image, truncated, too many pixels, bad path or parameters"),
    (401, "missing or wrong bearer token"), (404, "not in the index, or not under its root"),
    (413, "request body over the upload limit"), (503, "server busy: the work queue is full"))}
