"""Wall: move a dot through the door of a wall that splits a 65 x 65 grid (DINO-WM's DotWall).

The dot moves by ``2 * action`` grid units per step and is clamped at the walls: it
slides along a wall it runs into and crosses the middle wall only through the door.
Walls are pixels of the 65 x 65 grid (a border at 4 and 60, the middle wall 6 wide,
pixels ``32 - 3 .. 32 + 3``, with a door of half-gap 4 around ``door_y``); the dot's
centre never enters a wall pixel. Grid coordinate ``u`` is the centre of pixel ``u``.

State (float64, 3): dot xy and the door's y, so a goal state renders its own layout.
The image is black with grey walls and a red Gaussian dot (sigma 1.7 grid units).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from wmplan.envs.base import GoalEnv

GRID = 65
BORDER = (4, 60)  # border wall pixels
WALL_X, WALL_HALF_WIDTH = 32, 3  # wall width 6: pixels 29..35
DOOR_HALF_GAP = 4  # door pixels door_y - 4 .. door_y + 4
DEFAULT_DOOR_Y = 30
DOOR_RANGE = (15, 49)  # random doors stay 10 px clear of the border (DINO-WM's door padding)
ACTION_GAIN = 2.0  # next = pos + 2 * action
DOT_SIGMA = 1.7
DOT_RADIUS = DOT_SIGMA * np.sqrt(2 * np.log(255))  # beyond it the dot is < 1/255: black
SUCCESS_DISTANCE = 4.5
GOAL_STEPS = 25  # easy goals lie within the expected travel of 25 env steps
TRAVEL_PER_STEP = 1.0  # DINO-WM's mean step length when sizing easy goals
MARGIN = 2 * DOT_SIGMA  # sampled positions keep this far from walls

# Free space for the dot's centre: the two rooms and the doorway between them (boxes).
LO, HI = BORDER[0] + 0.5, BORDER[1] - 0.5
WALL_LEFT, WALL_RIGHT = WALL_X - WALL_HALF_WIDTH - 0.5, WALL_X + WALL_HALF_WIDTH + 0.5
BACKGROUND = np.array([0, 0, 0], dtype=np.uint8)
WALL_COLOR = np.array([170, 170, 170], dtype=np.uint8)
DOT_COLOR = np.array([255, 60, 60], dtype=np.float32)


def rooms(door_y: float) -> list[tuple[float, float, float, float]]:
    """Free boxes ``(x_lo, x_hi, y_lo, y_hi)`` left to right: left room, doorway, right room."""
    gap = DOOR_HALF_GAP + 0.5
    return [(LO, WALL_LEFT, LO, HI), (WALL_LEFT, WALL_RIGHT, door_y - gap, door_y + gap),
            (WALL_RIGHT, HI, LO, HI)]  # fmt: skip


def _inside(p: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    return box[0] <= p[0] <= box[1] and box[2] <= p[1] <= box[3]


def room_of(p: np.ndarray, door_y: float) -> int:
    """Index into ``rooms(door_y)`` of the first free box holding ``p``; ValueError in a wall."""
    for index, box in enumerate(rooms(door_y)):
        if _inside(p, box):
            return index
    raise ValueError(f"WallEnv: dot position {p} lies inside a wall (door at y={door_y})")


def move(p: np.ndarray, q: np.ndarray, door_y: float) -> np.ndarray:
    """Move the dot from ``p`` toward ``q``, passing between rooms only through the door.

    Walk the segment box by box: where it leaves a box through a face shared with the
    next box (the doorway's side faces, the rooms' faces within the door's span) it
    carries on; elsewhere it is blocked and slides: the end point is clamped into the box.
    """
    boxes = rooms(door_y)
    room = room_of(p, door_y)
    while not _inside(q, boxes[room]):
        box, d = boxes[room], q - p
        # Time at which the segment leaves the box through an x face and a y face.
        tx = ((box[1] if d[0] > 0 else box[0]) - p[0]) / d[0] if d[0] else np.inf
        ty = ((box[3] if d[1] > 0 else box[2]) - p[1]) / d[1] if d[1] else np.inf
        step = 1 if d[0] > 0 else -1
        if ty <= tx or not 0 <= room + step <= 2:  # through a top/bottom face or the border
            return np.clip(q, [box[0], box[2]], [box[1], box[3]])
        exit_point = np.array([box[1] if step > 0 else box[0], p[1] + tx * d[1]])
        if not _inside(exit_point, boxes[room + step]):  # hit the wall beside the door
            return np.clip(q, [box[0], box[2]], [box[1], box[3]])
        p, room = exit_point, room + step
    return q


class WallEnv(GoalEnv):
    """Navigate the dot to the goal on the other side of the wall."""

    state_dim = 3
    proprio_dim = 2

    def __init__(
        self,
        resolution: int = 64,
        door_y: int | None = None,
        randomize_door: bool = False,
        goal_level: str = "easy",
        render_mode: str | None = "rgb_array",
    ):
        super().__init__(resolution, render_mode)
        if goal_level not in ("easy", "hard"):
            raise ValueError(f"WallEnv: goal_level must be 'easy' or 'hard', got {goal_level!r}")
        self.door_y = DEFAULT_DOOR_Y if door_y is None else self._check_door(door_y)
        self.randomize_door, self.goal_level = bool(randomize_door), goal_level
        r = self.resolution
        self.observation_space = spaces.Dict(
            pixels=spaces.Box(0, 255, (r, r, 3), np.uint8),
            proprio=spaces.Box(-np.inf, np.inf, (self.proprio_dim,), np.float32),
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        # Grid coordinate of each image pixel's centre (at 65 px: 0, 1, ..., 64).
        self._pixel_coords = (np.arange(r) + 0.5) * GRID / r - 0.5  # [r]
        self._wall_images: dict[int, np.ndarray] = {}
        self.set_state(np.array([(LO + WALL_LEFT) / 2, self.door_y, self.door_y]))

    @staticmethod
    def _check_door(door_y: float) -> int:
        if door_y != int(door_y) or not DOOR_RANGE[0] <= door_y <= DOOR_RANGE[1]:
            raise ValueError(f"WallEnv: door_y must be an integer in {list(DOOR_RANGE)}, got {door_y}")
        return int(door_y)

    # -- physics ------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        return np.array([*self._pos, self._door], dtype=np.float64)

    def set_state(self, state: np.ndarray) -> None:
        s = self._check_state(state)
        door = self._check_door(s[2])
        room_of(s[:2], door)  # raises if the dot is inside a wall
        self._pos, self._door = s[:2].copy(), door

    def _apply_action(self, action: np.ndarray) -> None:
        self._pos = move(self._pos, self._pos + ACTION_GAIN * action, self._door)

    # -- goal API -----------------------------------------------------------------
    def sample_start_and_goal(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Start and goal on opposite sides of the wall ("easy": both near the door)."""
        door = int(rng.integers(DOOR_RANGE[0], DOOR_RANGE[1] + 1)) if self.randomize_door else self.door_y
        if self.goal_level == "easy":
            reach = GOAL_STEPS * TRAVEL_PER_STEP
            left_x = (WALL_LEFT - 0.75 * reach, WALL_LEFT - 0.25 * reach)
            right_x = (WALL_RIGHT + 0.25 * reach, WALL_RIGHT + 0.75 * reach)
            y = (max(door - 0.75 * reach, LO + MARGIN), min(door + 0.75 * reach, HI - MARGIN))
        else:
            left_x, right_x = (LO + MARGIN, WALL_LEFT - MARGIN), (WALL_RIGHT + MARGIN, HI - MARGIN)
            y = (LO + MARGIN, HI - MARGIN)
        start = np.array([rng.uniform(*left_x), rng.uniform(*y), door])
        goal = np.array([rng.uniform(*right_x), rng.uniform(*y), door])
        return (goal, start) if rng.random() < 0.5 else (start, goal)

    def evaluate(self, state: np.ndarray, goal_state: np.ndarray) -> dict[str, Any]:
        s, g = self._check_state(state), self._check_state(goal_state)
        distance = float(np.linalg.norm(s[:2] - g[:2]))
        return {"success": distance < SUCCESS_DISTANCE, "distance": distance}

    # -- observation --------------------------------------------------------------
    def _proprio(self) -> np.ndarray:
        return self._pos.astype(np.float32)

    def _render(self) -> np.ndarray:
        # Draw the dot only where it is visible: a window of +-DOT_RADIUS around it.
        image = self._wall_image(self._door).copy()  # [r, r, 3]
        coords, (x, y) = self._pixel_coords, self._pos
        cols = slice(*np.searchsorted(coords, [x - DOT_RADIUS, x + DOT_RADIUS]))
        rows = slice(*np.searchsorted(coords, [y - DOT_RADIUS, y + DOT_RADIUS]))
        gx = np.exp(-0.5 * ((coords[cols] - x) / DOT_SIGMA) ** 2)  # [w]
        gy = np.exp(-0.5 * ((coords[rows] - y) / DOT_SIGMA) ** 2)  # [h]
        dot = (np.outer(gy, gx)[..., None] * DOT_COLOR).astype(np.uint8)  # [h, w, 3]
        image[rows, cols] = np.maximum(image[rows, cols], dot)
        return image

    def _wall_image(self, door: int) -> np.ndarray:
        """The layout without the dot, uint8 [r, r, 3], cached per door position."""
        if door not in self._wall_images:
            cell = np.rint(self._pixel_coords).astype(int)  # grid pixel under each image pixel
            x, y = cell[None, :], cell[:, None]
            border = np.isin(x, BORDER) | np.isin(y, BORDER)
            middle = (abs(x - WALL_X) <= WALL_HALF_WIDTH) & (abs(y - door) > DOOR_HALF_GAP)
            self._wall_images[door] = np.where((border | middle)[..., None], WALL_COLOR, BACKGROUND)
        return self._wall_images[door]
