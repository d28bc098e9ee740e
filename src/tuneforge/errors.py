"""AWS-style service errors, raised by services and rendered by the API.

Services raise these; the Bedrock surface turns them into an ``x-amzn-ErrorType`` header plus
``{"message": ...}`` with the matching status code, which botocore maps onto its modelled
exception classes (``client.exceptions.ValidationException`` and so on).
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    code: ClassVar[str] = "InternalServerException"
    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationException(ServiceError):
    code = "ValidationException"
    status = 400


class ConflictException(ServiceError):
    code = "ConflictException"
    status = 400


class ResourceInUseException(ServiceError):
    code = "ResourceInUseException"
    status = 400


class ServiceQuotaExceededException(ServiceError):
    code = "ServiceQuotaExceededException"
    status = 400


class TooManyTagsException(ServiceError):
    code = "TooManyTagsException"
    status = 400


class AccessDeniedException(ServiceError):
    code = "AccessDeniedException"
    status = 403


class ResourceNotFoundException(ServiceError):
    code = "ResourceNotFoundException"
    status = 404


class ThrottlingException(ServiceError):
    code = "ThrottlingException"
    status = 429


class InternalServerException(ServiceError):
    code = "InternalServerException"
    status = 500


class ServiceUnavailableException(ServiceError):
    code = "ServiceUnavailableException"
    status = 503


def constraint_errors(violations: list[str]) -> ValidationException:
    """AWS's aggregate message: '1 validation error detected: Value ... failed to satisfy ...'."""
    count = len(violations)
    noun = "error" if count == 1 else "errors"
    return ValidationException(f"{count} validation {noun} detected: " + "; ".join(violations))


def pattern_violation(value: object, member: str, pattern: str) -> str:
    return (
        f"Value '{value}' at '{member}' failed to satisfy constraint: "
        f"Member must satisfy regular expression pattern: {pattern}"
    )


def length_violation(value: object, member: str, minimum: int, maximum: int) -> str:
    text = str(value)
    if len(text) > maximum:
        return (
            f"Value '{value}' at '{member}' failed to satisfy constraint: "
            f"Member must have length less than or equal to {maximum}"
        )
    return (
        f"Value '{value}' at '{member}' failed to satisfy constraint: "
        f"Member must have length greater than or equal to {minimum}"
    )


def enum_violation(value: object, member: str, allowed: tuple[str, ...]) -> str:
    return (
        f"Value '{value}' at '{member}' failed to satisfy constraint: "
        f"Member must satisfy enum value set: [{', '.join(allowed)}]"
    )


def range_violation(value: object, member: str, minimum: int | None, maximum: int | None) -> str:
    if maximum is not None and isinstance(value, int) and value > maximum:
        return (
            f"Value '{value}' at '{member}' failed to satisfy constraint: "
            f"Member must have value less than or equal to {maximum}"
        )
    return (
        f"Value '{value}' at '{member}' failed to satisfy constraint: "
        f"Member must have value greater than or equal to {minimum}"
    )


class ModelNotReadyException(ServiceError):
    """bedrock-runtime: the deployment exists but cannot serve yet (botocore retries it)."""

    code = "ModelNotReadyException"
    status = 429


class ModelErrorException(ServiceError):
    """bedrock-runtime: the model failed while processing the request (an engine failed or went away)."""

    code = "ModelErrorException"
    status = 424
